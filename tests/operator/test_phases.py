"""The phase state machine as a table: every (event, from, to) is either allowed or refused,
and what the model event does next for every kind of status it can see.

The expected table is written out here, not derived from ``phases.TRANSITIONS``, so a
change to the state machine has to change this file too.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from modelpress import api
from modelpress.operator import phases
from modelpress.operator.phases import Event, Forbidden, JobState, Observed, Step

NO_PHASE = [None, "Pending"]
EVERY_PHASE = [
    *NO_PHASE,
    "Queued",
    "Compressing",
    "Validated",
    "Rejected",
    "Failed",
    "RollingOut",
    "Serving",
    "RolledBack",
]
SERVABLE = ["Validated", "RollingOut", "Serving", "RolledBack"]

# event -> (the phases it may start from, the phases it may lead to)
ALLOWED: dict[Event, tuple[list[str | None], list[str]]] = {
    Event.SPEC_INVALID: (EVERY_PHASE, ["Failed"]),
    Event.CAP_FULL: (EVERY_PHASE, ["Queued"]),
    Event.JOB_CREATED: (EVERY_PHASE, ["Queued", "Compressing"]),
    Event.KUEUE_ADMITTED: (["Queued"], ["Compressing"]),
    Event.KUEUE_SUSPENDED: (["Compressing"], ["Queued"]),
    Event.JOB_REFUSED: (["Queued", "Compressing"], ["Failed"]),
    Event.JOB_FINISHED: ([*NO_PHASE, "Queued", "Compressing"], ["Validated", "Rejected", "Failed"]),
    Event.ROLLOUT: (SERVABLE, ["RollingOut", "Serving", "RolledBack"]),
    Event.SERVING_RELEASED: (SERVABLE, ["Validated"]),
}
TABLE = [
    (event, source, target, source in ALLOWED[event][0] and target in ALLOWED[event][1])
    for event, source, target in itertools.product(Event, EVERY_PHASE, [p.value for p in api.Phase])
]


def test_the_table_covers_every_event_and_phase() -> None:
    assert set(ALLOWED) == set(Event)
    assert set(EVERY_PHASE) - {None} == {p.value for p in api.Phase}


@pytest.mark.parametrize(("event", "source", "target", "allowed"), TABLE, ids=lambda v: str(getattr(v, "name", v)))
def test_transition(event: Event, source: str | None, target: str, allowed: bool) -> None:
    if allowed:
        assert phases.transition(event, source, target) == target
    else:
        with pytest.raises(Forbidden, match=event.name):
            phases.transition(event, source, target)


# --------------------------------------------------------------------------- the changes


def status(phase: str | None = None, recipe: str | None = "h1", **fields: Any) -> api.CompressedModelStatus:
    return api.CompressedModelStatus.model_validate({"phase": phase, "recipeHash": recipe, **fields})


def refused_status(generation: int = 1) -> api.CompressedModelStatus:
    compressed = {"type": "Compressed", "status": "False", "reason": phases.REFUSED_REASON}
    return status("Failed", observedGeneration=generation, conditions=[compressed])


def test_a_refusal_is_failed_from_the_phase_written_before_the_create_only() -> None:
    change = phases.refused("Compressing", 3, "h1", 422, "spec.template: bad")
    assert change.phase == "Failed" and change.fields["recipeHash"] == "h1" and change.fields["jobName"] is None
    assert change.event == (
        "Warning",
        "JobRefused",
        "the API server refused the compression Job (422): spec.template: bad; fix spec.job and apply again",
    )
    assert [c["reason"] for c in change.conditions] == ["Valid", "JobRefused", "JobRefused", "JobRefused"]
    with pytest.raises(Forbidden):
        phases.refused("Validated", 3, "h1", 422, "x")


def test_a_job_outcome_counts_from_its_own_recipe_phase() -> None:
    job = {"metadata": {"name": "m-h1"}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    # The index still shows the model Serving an older recipe: nothing is known of h1 yet.
    stale = phases.job_finished(status("Serving", recipe="h0"), 2, {}, job, [], "h1")
    assert stale.phase == "Failed" and stale.fields["jobName"] == "m-h1" and stale.fields["observedGeneration"] == 2
    assert phases.job_finished(status("Compressing"), 2, {}, job, [], "h1").phase == "Failed"
    with pytest.raises(Forbidden):  # a Serving model of this very recipe was collected already
        phases.job_finished(status("Serving"), 2, {}, job, [], "h1")
    # A refusal of this recipe created no Job: a finished Job is the retry's, even before the index
    # shows the retry's Compressing (a clean-clone CI run lost that race).
    refused = refused_status()
    assert phases.job_finished(refused, 2, {}, job, [], "h1").phase == "Failed"


def test_kueue_moves_only_between_queued_and_compressing() -> None:
    admitted = phases.follow_job(status("Queued"), "m-h1", False, None)
    assert admitted is not None and admitted.phase == "Compressing"
    assert [c["reason"] for c in admitted.conditions] == ["JobRunning", "Compressing"]
    preempted = phases.follow_job(status("Compressing"), "m-h1", True, "gpus")
    assert (
        preempted is not None
        and preempted.phase == "Queued"
        and "LocalQueue gpus" in preempted.conditions[0]["message"]
    )
    assert phases.follow_job(status("Compressing"), "m-h1", False, None) is None
    with pytest.raises(Forbidden):
        phases.follow_job(status("Validated"), "m-h1", False, None)


def test_queued_by_the_cap_once_per_recipe() -> None:
    queued = phases.cap_full(status("Validated", recipe="h0"), 4, "h1", 2)
    assert queued is not None and queued.phase == "Queued"
    assert queued.fields == {"observedGeneration": 4, "recipeHash": "h1", "jobName": None}
    assert queued.conditions[1]["message"] == "waiting: 2 compression Jobs already run"
    assert phases.cap_full(status("Queued"), 4, "h1", 2) is None
    assert phases.cap_full(status("Queued", recipe="h0"), 4, "h1", 2) is not None


def test_an_invalid_spec_is_failed_once_per_generation_and_message() -> None:
    first = phases.invalid(status("Serving"), 2, "spec.x: bad")
    assert first is not None and first.phase == "Failed" and first.event == ("Warning", "InvalidSpec", "spec.x: bad")
    assert first.fields == {"observedGeneration": 2, "recipeHash": None, "jobName": None}
    written = status("Failed", None, observedGeneration=2, conditions=first.patch(status(), 2, "t")["conditions"])
    assert phases.invalid(written, 2, "spec.x: bad") is None
    assert phases.invalid(written, 3, "spec.x: bad") is not None
    assert phases.invalid(written, 2, "spec.y: bad") is not None


def test_rollout_phases_only_follow_a_servable_one() -> None:
    assert phases.rollout_report(status("Validated"), "RollingOut", "Started", "m").phase == "RollingOut"
    same = phases.rollout_report(status("Serving"), "Serving", "Serving", "m")
    assert same.phase == "Serving" and same.event == ("Normal", "Serving", "m")
    assert phases.rollout_report(status("RollingOut"), "RollingOut", "RolledBack", "m").event[0] == "Warning"
    with pytest.raises(Forbidden):
        phases.rollout_report(status("Compressing"), "Serving", "Promoted", "m")


def test_releasing_serving_keeps_a_compressing_model_compressing() -> None:
    released = phases.serving_released(status("Serving"), "ServingRemoved", "gone")
    assert released.phase == "Validated" and released.fields == {"rollout": None}
    busy = phases.serving_released(status("Compressing"), "ServingRemoved", "gone")
    assert busy.phase is None and not busy.conditions and busy.patch(status("Compressing"), 1, "t") == {"rollout": None}


def test_a_patch_moves_lasttransitiontime_only_on_a_flip() -> None:
    old = status(
        "Compressing",
        conditions=[{"type": "Ready", "status": "False", "reason": "Queued", "lastTransitionTime": "t0"}],
    )
    patch = phases.Change("Compressing", [{"type": "Ready", "status": "False", "reason": "Compressing"}]).patch(
        old, 5, "t1"
    )
    assert patch["phase"] == "Compressing"
    assert patch["conditions"] == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Compressing",
            "observedGeneration": 5,
            "lastTransitionTime": "t0",
        }
    ]


# --------------------------------------------------------------------------- deciding

RUNNING = JobState(None, "u1", False)
SUSPENDED = JobState(None, "u1", True)
DONE = JobState("Complete", "u1", False)


def seen(st_: api.CompressedModelStatus, **kw: Any) -> Observed:
    base: dict[str, Any] = dict(
        generation=1, recipe_hash="h1", job_name="m-h1", serving=True, job=None, created_here=False, collected=False
    )
    return Observed(status=st_, **{**base, **kw})


DECISIONS = [
    # (what is seen, the step) -- one row per branch of decide
    ("no status yet", seen(status(None, None)), Step.START),
    ("a new recipe over a served one", seen(status("Serving", "h0", observedGeneration=1)), Step.START),
    ("a done recipe, nothing new", seen(status("Validated", observedGeneration=1)), Step.NOTHING),
    ("a done recipe, a new generation", seen(status("Rejected", observedGeneration=1), generation=2), Step.RESTAMP),
    ("refused, the same generation", seen(refused_status(1)), Step.NOTHING),
    ("refused, then edited", seen(refused_status(1), generation=2), Step.START),
    ("queued by the cap, same recipe", seen(status("Queued", observedGeneration=1)), Step.START),
    ("compressing, no Job seen nor made here", seen(status("Compressing", jobName="m-h1")), Step.ENSURE_JOB),
    (
        "compressing, Job made here, first event to come",
        seen(status("Compressing", jobName="m-h1", observedGeneration=1), created_here=True),
        Step.NOTHING,
    ),
    ("compressing, the Job finished", seen(status("Compressing", jobName="m-h1"), job=DONE), Step.COLLECT),
    (
        "compressing, the Job finished and collected",
        seen(status("Compressing", jobName="m-h1", observedGeneration=1), job=DONE, collected=True),
        Step.NOTHING,
    ),
    ("compressing, Kueue suspended it", seen(status("Compressing", jobName="m-h1"), job=SUSPENDED), Step.FOLLOW_JOB),
    ("queued for Kueue, admitted", seen(status("Queued", jobName="m-h1"), job=RUNNING), Step.FOLLOW_JOB),
    (
        "compressing, a job-only edit",
        seen(status("Compressing", jobName="m-h1", observedGeneration=1), job=RUNNING, generation=2),
        Step.RESTAMP,
    ),
    (
        "compressing as it should",
        seen(status("Compressing", jobName="m-h1", observedGeneration=1), job=RUNNING),
        Step.NOTHING,
    ),
]


@pytest.mark.parametrize(("seen_", "step"), [row[1:] for row in DECISIONS], ids=[row[0] for row in DECISIONS])
def test_decide(seen_: Observed, step: Step) -> None:
    assert phases.decide(seen_).step is step


def test_a_restamp_of_a_validated_model_no_longer_served_makes_it_ready() -> None:
    validated = status("Validated", observedGeneration=1)
    kept = phases.decide(seen(validated, generation=2)).change
    assert kept is not None and [c["type"] for c in kept.conditions] == ["SpecValid"]
    off = phases.decide(seen(validated, generation=2, serving=False)).change
    assert off is not None and off.phase is None and off.fields == {"observedGeneration": 2}
    assert [(c["type"], c["status"], c["message"]) for c in off.conditions] == [
        ("SpecValid", "True", ""),
        ("Ready", "True", "validated; serving is disabled"),
    ]


def test_every_new_job_starts_queued_or_compressing_from_any_phase() -> None:
    for phase in EVERY_PHASE:
        for suspended, target in ((True, "Queued"), (False, "Compressing")):
            change = phases.job_created(status(phase, "h0"), 2, "h1", "m-h1", suspended, "q")
            assert change.phase == target
            assert change.fields == {
                "observedGeneration": 2,
                "recipeHash": "h1",
                "jobName": "m-h1",
                "artifact": None,
                "results": None,
            }
            assert [c["type"] for c in change.conditions] == ["SpecValid", "Compressed", "Ready", "Validated"]
