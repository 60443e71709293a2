"""Every condition the operator writes, in full: (type, status, reason, message) per phase.

A wrong status on one condition (``Validated=True`` on a rejected model, ``Ready=True``
while Queued) is what users and GitOps tools act on, so these compare whole lists, not
one field. Also pinned: ``same_conditions`` (it decides whether status and an Event are
written at all), ``merge_conditions`` and which pod's termination message is read.
"""

from __future__ import annotations

from typing import Any

import pytest

from modelpress.operator import phases
from modelpress.operator import status as st
from modelpress.summary import JobSummary

SUMMARY = JobSummary(
    outcome="Validated",
    artifact={"storageUri": "s3://m/out/abc", "sha256": "ab" * 32, "sizeBytes": 5},
    results={"passed": True, "accuracyDrop": 0.001, "speedup": 3.0, "sizeRatio": 0.25},
)
VALIDATED_LINE = "validated: accuracy drop 0.0010, speedup 3.00x, size ratio 0.25"


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def job(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"status": {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}}


def pod(
    message: str | None,
    created: str | None = "2026-01-01T00:00:00Z",
    exit_code: int = 0,
    init: list[dict[str, Any]] | None = None,
    last_state: bool = False,
) -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}
    if message is not None:
        terminated["message"] = message
    state = {"lastState": {"terminated": terminated}} if last_state else {"state": {"terminated": terminated}}
    status: dict[str, Any] = {"containerStatuses": [{"name": "upload", **state}]}
    if init is not None:
        status["initContainerStatuses"] = init
    return {"metadata": {"creationTimestamp": created} if created else {}, "status": status}


def init_container(name: str, exit_code: int, message: str | None) -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": exit_code}
    if message is not None:
        terminated["message"] = message
    return {"name": name, "state": {"terminated": terminated}}


# --------------------------------------------------------------------------- builders


def test_condition_is_a_string_status_and_a_bounded_message() -> None:
    assert st.condition("Ready", True, "Validated") == cond("Ready", "True", "Validated")
    assert st.condition("Ready", False, "Queued", "m") == cond("Ready", "False", "Queued", "m")
    assert st.condition("Ready", False, "X", "y" * 2000)["message"] == "y" * 1024
    assert phases.spec_valid() == cond("SpecValid", "True", "Valid")


def test_queued_and_compressing() -> None:
    queued = "compression Job m-1 is suspended until Kueue admits it in LocalQueue team"
    assert phases.progress_conditions("m-1", True, "team") == [
        cond("Compressed", "False", "WaitingForKueue", queued),
        cond("Ready", "False", "Queued", queued),
    ]
    plain = "compression Job m-1 is suspended until Kueue admits it"
    assert phases.progress_conditions("m-1", True)[0]["message"] == plain
    running = "compression Job m-1 is running"
    assert phases.progress_conditions("m-1", False, "team") == [
        cond("Compressed", "False", "JobRunning", running),
        cond("Ready", "False", "Compressing", running),
    ]
    assert (phases.progress_phase(True), phases.progress_phase(False)) == ("Queued", "Compressing")


@pytest.mark.parametrize(
    ("serving", "ready"),
    [
        (None, cond("Ready", "True", "Validated", st.SERVING_DISABLED_MESSAGE)),
        ({"enabled": False}, cond("Ready", "True", "Validated", st.SERVING_DISABLED_MESSAGE)),
        ({}, cond("Ready", "False", "RolloutPending", "validated; waiting for the rollout")),
        ({"enabled": True}, cond("Ready", "False", "RolloutPending", "validated; waiting for the rollout")),
    ],
)
def test_validated(serving: dict | None, ready: dict) -> None:
    spec = {} if serving is None else {"serving": serving}
    fields, conds, event = st.outcome_status(spec, job("Complete"), [pod(SUMMARY.to_termination_message())])
    assert conds == [
        cond("Compressed", "True", "JobSucceeded", VALIDATED_LINE),
        cond("Validated", "True", "ThresholdsMet", VALIDATED_LINE),
        ready,
    ]
    assert event == ("Normal", "Validated", VALIDATED_LINE)
    assert fields == {
        "phase": "Validated",
        "artifact": {"storageUri": "s3://m/out/abc", "sha256": "ab" * 32, "sizeBytes": 5},
        "results": {"passed": True, "accuracyDrop": 0.001, "speedup": 3.0, "sizeRatio": 0.25, "failedThresholds": []},
    }


def test_a_validated_summary_from_a_failed_job_is_not_validated() -> None:
    fields, conds, _ = st.outcome_status({}, job("Failed", "DeadlineExceeded"), [pod(SUMMARY.to_termination_message())])
    assert fields["phase"] == "Failed"
    assert [(c["type"], c["status"]) for c in conds] == [
        ("Compressed", "False"),
        ("Validated", "False"),
        ("Ready", "False"),
    ]


@pytest.mark.parametrize(
    ("reason", "failed", "message"),
    [
        (
            "best trial broke it",
            ["maxLatencyMs", "minSpeedup"],
            "threshold exceeded: maxLatencyMs, minSpeedup (best trial broke it)",
        ),
        ("", ["maxLatencyMs"], "threshold exceeded: maxLatencyMs"),
        ("no trial met the gate", [], "threshold exceeded: no trial met the gate"),
    ],
)
def test_rejected(reason: str, failed: list[str], message: str) -> None:
    summary = JobSummary(outcome="Rejected", reason=reason, results={"passed": False, "failedThresholds": failed})
    fields, conds, event = st.outcome_status(
        {"serving": {}}, job("Failed"), [pod(summary.to_termination_message(), exit_code=3)]
    )
    assert conds == [
        cond("Compressed", "True", "JobSucceeded", "compression ran"),
        cond("Validated", "False", "ThresholdExceeded", message),
        cond("Ready", "False", "Rejected", message),
    ]
    assert event == ("Warning", "Rejected", message)
    assert fields == {"phase": "Rejected", "results": {"passed": False, "failedThresholds": failed}}


def test_failed() -> None:
    summary = JobSummary(outcome="Failed", reason="source.storageUri: not found")
    fields, conds, event = st.outcome_status({}, job("Failed"), [pod(summary.to_termination_message(), exit_code=1)])
    message = "source.storageUri: not found"
    assert conds == [
        cond("Compressed", "False", "JobFailed", message),
        cond("Validated", "False", "JobFailed", "the compression did not finish, so nothing was validated"),
        cond("Ready", "False", "JobFailed", message),
    ]
    assert (fields, event) == ({"phase": "Failed"}, ("Warning", "JobFailed", message))


@pytest.mark.parametrize(
    ("spec", "enabled"),
    [({}, False), ({"serving": None}, False), ({"serving": {}}, True), ({"serving": {"enabled": False}}, False)],
)
def test_serving_enabled(spec: dict, enabled: bool) -> None:
    assert st.serving_enabled(spec) is enabled


# --------------------------------------------------------------------------- same / merge


READY = cond("Ready", "False", "Compressing", "running")
COMPRESSED = cond("Compressed", "False", "JobRunning", "running")


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        ([READY, COMPRESSED], [READY], True),
        ([{**READY, "lastTransitionTime": "t1", "observedGeneration": 1}], [READY], True),  # timestamps are not news
        ([READY], [READY, COMPRESSED], False),  # a new condition
        (None, [READY], False),
        ([], [READY], False),
        (None, [], True),
        ([READY], [{**READY, "status": "True"}], False),
        ([READY], [{**READY, "reason": "Queued"}], False),
        ([READY], [{**READY, "message": "other"}], False),
        ([COMPRESSED], [{**COMPRESSED, "type": "Ready"}], False),
    ],
)
def test_same_conditions(old, new, same: bool) -> None:
    assert st.same_conditions(old, new) is same


def test_merge_keeps_other_conditions_and_moves_time_only_on_a_flip() -> None:
    old = [{**COMPRESSED, "lastTransitionTime": "t0", "observedGeneration": 1}, {**READY, "lastTransitionTime": "t0"}]
    merged = st.merge_conditions(old, [{**READY, "reason": "Queued"}, phases.spec_valid()], 2, "t1")
    assert merged == [
        {**COMPRESSED, "lastTransitionTime": "t0", "observedGeneration": 1},
        {**READY, "reason": "Queued", "lastTransitionTime": "t0", "observedGeneration": 2},
        {**phases.spec_valid(), "lastTransitionTime": "t1", "observedGeneration": 2},
    ]
    assert st.merge_conditions(None, [READY], None, "t2") == [
        {**READY, "lastTransitionTime": "t2", "observedGeneration": None}
    ]
    no_time = st.merge_conditions([READY], [READY], 3, "t3")  # an old condition without a time gets one
    assert no_time == [{**READY, "lastTransitionTime": "t3", "observedGeneration": 3}]


# --------------------------------------------------------------------------- termination message


def test_the_newest_pod_wins_whatever_the_list_order() -> None:
    old = pod("old summary", created="2026-01-01T00:00:00Z")
    new = pod("new summary", created="2026-01-01T00:05:00Z")
    undated = pod("undated summary", created=None)
    assert st.termination_message([new, old]) == "new summary"
    assert st.termination_message([old, new]) == "new summary"
    assert st.termination_message([undated, old]) == "old summary"
    assert st.termination_message([old, undated]) == "old summary"


def test_a_newer_pod_without_a_message_defers_to_an_older_one() -> None:
    assert st.termination_message([pod("old", "2026-01-01T00:00:00Z"), pod(None, "2026-01-01T00:05:00Z")]) == "old"
    assert st.termination_message([pod("restarted", last_state=True)]) == "restarted"
    assert st.termination_message([]) is None
    assert st.termination_message([{"metadata": {}, "status": {}}]) is None


def test_the_main_container_wins_and_only_a_failing_init_container_speaks() -> None:
    failed_init = [init_container("download", 0, None), init_container("compress", 1, "source.storageUri: not found")]
    assert st.termination_message([pod(None, init=failed_init)]) == "source.storageUri: not found"
    assert st.termination_message([pod("summary", init=failed_init)]) == "summary"
    succeeded_init = [init_container("compress", 0, "compress finished")]
    assert st.termination_message([pod(None, init=succeeded_init)]) is None
    silent_failure = [init_container("compress", 137, None)]
    assert st.termination_message([pod(None, init=silent_failure)]) is None
