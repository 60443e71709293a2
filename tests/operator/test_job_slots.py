"""The maxConcurrentJobs book-keeping (operator/job_slots.py) kept per event equals a recount from
the indexes after any sequence of events, and what the operator remembers per Job and per model
goes when the Job or the model is deleted (a deleted running Job hands its slot on)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cluster import Cluster, Gate, running_operator, sample_model
from hypothesis import example, given, settings
from hypothesis import strategies as st_

from modelpress.operator import context as context_mod
from modelpress.operator import handlers
from modelpress.operator.job_slots import JobSlots
from modelpress.operator.phases import JobState
from modelpress.operator.settings import Settings

Key = tuple[str, str]
KEYS = st_.sampled_from([("a", "j1"), ("a", "j2"), ("b", "j1"), ("b", "j3"), ("c", "j4")])
FINISHED = st_.sampled_from([None, None, "Complete", "Failed"])

JOB_OPS = st_.one_of(
    st_.tuples(st_.just("start"), KEYS, st_.booleans()),  # this process creates a Job (suspended or not)
    st_.tuples(st_.just("event"), KEYS, FINISHED, st_.booleans()),  # a Job's ADDED/MODIFIED reaches the index
    st_.tuples(st_.just("delete"), KEYS),  # a Job's DELETED
    st_.tuples(st_.just("forget"), KEYS),  # collected, refused, or its status write lost
    st_.tuples(st_.just("restart")),  # a new process: nothing started, rebuilt from the index
)


def recount(index: dict[Key, JobState], started: dict[Key, bool]) -> set[Key]:
    """Slots held, counted from scratch: an unfinished, unsuspended Job in the index, or one this
    process created unsuspended whose first event has not reached the index yet."""
    running = {key for key, job in index.items() if not job.finished and not job.suspended}
    return running | {key for key, suspended in started.items() if key not in index and not suspended}


@settings(max_examples=300, deadline=None)
@given(st_.lists(JOB_OPS, max_size=40), st_.integers(min_value=0, max_value=3))
def test_running_count_equals_a_recount_after_any_job_events(ops: list[tuple[Any, ...]], cap: int) -> None:
    slots, index, started = JobSlots(), {}, {}
    slots.rebuild([], [])
    for op in ops:
        match op:
            case ("start", key, suspended):
                started[key] = suspended
                slots.start(key, suspended, index.get(key))
            case ("event", key, finished, suspended):
                index[key] = JobState(finished, f"uid-{key}", suspended)
                slots.job_seen(key, index[key])
            case ("delete", key):
                index.pop(key, None)
                started.pop(key, None)
                slots.forget(key, None)
            case ("forget", key):
                started.pop(key, None)
                slots.forget(key, index.get(key))
            case ("restart",):
                started, slots = {}, JobSlots()
                slots.rebuild(index.items(), [])
        expected = recount(index, started)
        assert slots.running == expected, op
        assert slots.started == started
        for key in [("a", "j1"), ("z", "new")]:
            assert slots.over_cap(cap, key) == (cap > 0 and key not in expected and len(expected) >= cap)
        # Rebuilt from the index at this point (a restart that kept what was started), it says the same.
        fresh = JobSlots(started=dict(started))
        fresh.rebuild(index.items(), [])
        assert fresh.running == expected


def model(name: str, phase: str | None, job_name: str | None, created: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    return {"metadata": meta, "spec": {}, "status": {"phase": phase, "jobName": job_name}}


MODELS = st_.sampled_from([("ml", f"m{i}") for i in range(6)])
CREATED = st_.sampled_from(["2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"])
MODEL_OPS = st_.one_of(
    # a model's ADDED/MODIFIED: Queued by the cap (no Job), by Kueue (a Job), or another phase
    st_.tuples(
        st_.just("event"),
        MODELS,
        st_.sampled_from(["Queued", "Queued", "Compressing", "Validated", None]),
        st_.sampled_from([None, None, "job-x"]),
        CREATED,
        st_.booleans(),
    ),
    st_.tuples(st_.just("delete"), MODELS),
    st_.tuples(st_.just("take")),  # the release takes the longest-waiting one out of line
    st_.tuples(st_.just("requeue")),  # ... and hands back what it took when done
    st_.tuples(st_.just("restart")),
)


QUEUED_AGAIN = ("event", ("ml", "m0"), "Queued", None, "2026-01-01T00:00:01Z", False)


@settings(max_examples=300, deadline=None)
@given(st_.lists(MODEL_OPS, max_size=60))
# Its event puts a model that a release took out of line back in line: the release must not take it twice.
@example([QUEUED_AGAIN, ("take",), QUEUED_AGAIN, ("take",), ("requeue",)])
def test_queue_is_the_cap_queued_models_in_line_order_after_any_model_events(ops: list[tuple[Any, ...]]) -> None:
    slots, index = JobSlots(), {}
    slots.rebuild([], [])
    taken: set[Key] = set()

    def line() -> list[Key]:
        """Recounted from the index: Queued with no Job and not being deleted, oldest first."""
        waiting = [
            (b["metadata"]["creationTimestamp"], key)
            for key, b in index.items()
            if b["status"]["phase"] == "Queued"
            and not b["status"]["jobName"]
            and "deletionTimestamp" not in b["metadata"]
        ]
        return [key for _, key in sorted(waiting)]

    for op in ops:
        match op:
            case ("event", key, phase, job_name, created, deleting):
                index[key] = model(key[1], phase, job_name, created, deleting)
                slots.model_seen(key, index[key])
            case ("delete", key):
                index.pop(key, None)
                slots.model_seen(key, None)
            case ("take",):
                expected = next((key for key in line() if key not in taken), None)
                assert slots.take_oldest(taken) == expected
            case ("requeue",):
                slots.requeue(taken)
                taken = set()
            case ("restart",):
                slots, taken = JobSlots(), set()
                slots.rebuild([], index.items())
        assert slots.queued() == line(), op
    slots.requeue(taken)
    drained: list[Key] = []
    while (key := slots.take_oldest(set(drained))) is not None:
        drained.append(key)
    assert drained == line()  # nothing lost out of line, nothing in it twice


def test_many_stale_entries_do_not_grow_the_line() -> None:
    slots = JobSlots()
    slots.rebuild([], [])
    for i in range(1000):  # one model queued, then moved on, a thousand times over with a new place
        slots.model_seen(("ml", "m"), model("m", "Queued", None, f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z"))
        slots.model_seen(("ml", "m"), None)
    assert len(slots._heap) <= 2 * len(slots._heaped) + 65


# --------------------------------------------------------------------------- handlers


def _memo(**settings: Any) -> tuple[Any, context_mod.Context]:
    memo = context_mod.memo_for(Settings(**settings))
    return memo, context_mod.of(memo)


def test_job_deleted_forgets_its_uid_and_its_slot() -> None:
    memo, ctx = _memo()
    job = {"metadata": {"namespace": "ml", "name": "m-h1", "uid": "u1", "labels": {}}}
    ctx.collected.add("u1")
    ctx.collected.add("u2")  # another Job's
    ctx.slots.rebuild([], [])
    ctx.slots.start(("ml", "m-h1"), False, None)
    assert ctx.slots.running == {("ml", "m-h1")}
    asyncio.run(handlers.job_event(event={"type": "DELETED", "object": job}, memo=memo, compression_jobs={}, models={}))
    assert ctx.collected == {"u2"}
    assert ctx.slots.started == {} and ctx.slots.running == set()


def test_model_deleted_forgets_its_rollout_check_and_its_place_in_line() -> None:
    memo, ctx = _memo()
    body = model("m", "Queued", None, "2026-01-01T00:00:00Z")
    body["metadata"]["uid"] = "mu1"
    ctx.rollout_checked.update({"mu1": 3, "mu2": 1})
    ctx.slots.rebuild([], [(("ml", "m"), body)])
    assert ctx.slots.queued() == [("ml", "m")]
    asyncio.run(
        handlers.model_event(event={"type": "DELETED", "object": body}, memo=memo, compression_jobs={}, models={})
    )
    assert ctx.rollout_checked == {"mu2": 1}
    assert ctx.slots.queued() == []


def test_slots_are_rebuilt_from_the_indexes_on_first_use() -> None:
    """A restarted operator counts the Jobs the cluster runs and the models already queued."""
    memo, ctx = _memo(max_concurrent_jobs=1)
    jobs = {("ml", "a-h"): [JobState(None, "ua", False)], ("ml", "b-h"): [JobState("Complete", "ub", False)]}
    queued = model("c", "Queued", None, "2026-01-01T00:00:00Z")
    models = {("ml", "c"): [queued]}
    done = {"metadata": {"namespace": "ml", "name": "b-h", "uid": "ub", "labels": {}}}
    asyncio.run(
        handlers.job_event(event={"type": "DELETED", "object": done}, memo=memo, compression_jobs=jobs, models=models)
    )
    assert ctx.slots.built and ctx.slots.running == {("ml", "a-h")}
    assert ctx.slots.queued() == [("ml", "c")]


def test_a_deleted_running_job_hands_its_slot_on(tmp_path: Path) -> None:
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c:
        with running_operator(c, max_concurrent_jobs="1"):
            c.apply_model(sample_model("first"))
            c.wait_for("first running", lambda: gate.runs)
            c.apply_model(sample_model("second"))
            c.wait_for("second queued", lambda: (c.model("second") or {}).get("status", {}).get("phase") == "Queued")
            c.sync(c.server.delete, "batch", "jobs", c.namespace, gate.runs[0])
            c.wait_phase("second", "Compressing", 30)
            gate.event.set()
            c.wait_phase("second", "Validated", 30)
