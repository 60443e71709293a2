"""The rollout state machine at its edges: what tests/serving/test_rollout.py's walks do not pin.

Durations to the unit, the history bound, the ``changed`` flag of every transition (it
decides whether the handler patches), counters reset where a rollout starts over, and
the baseline/immediate paths when what is served disagrees with what status says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelpress.api import AnalysisResult, Rollout, RolloutEvent, RolloutStatus
from modelpress.operator.rollout import (
    MAX_HISTORY,
    BaselineMissing,
    Decision,
    Traffic,
    analysis_due,
    desired_traffic,
    parse_duration,
    plan,
    settled,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OLD, NEW, NEWER, SRC = "s3://b/old/", "s3://b/new/", "s3://b/newer/", "s3://b/source/model.onnx"


def verdict(v: str, message: str = "checked") -> AnalysisResult:
    return AnalysisResult(time=T0.isoformat(), verdict=v, message=message)


def active(step: int = 0, percent: int | None = 10, failures: int = 0, **fields) -> RolloutStatus:
    return RolloutStatus(
        stable_storage_uri=OLD, canary_storage_uri=NEW, step=step, canary_percent=percent, failures=failures, **fields
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("2m", 120), ("1h", 3600), ("500ms", 0.5), ("1h30m15s500ms", 5415.5), ("0s", 0)],
)
def test_parse_duration_counts_every_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "5m ", " 5m", "5mx", "x5m", "5m5", "1d", "-5m", "5 m"])
def test_parse_duration_refuses_anything_but_whole_units(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_history_keeps_exactly_the_newest_entries_the_api_allows() -> None:
    rollout = Rollout(steps=[50], interval="1m")
    d = plan(rollout, None, NEW, OLD, T0)
    for i in range(MAX_HISTORY + 5):  # every restart appends one event
        d = plan(rollout, d.status, NEWER if i % 2 == 0 else NEW, OLD, T0 + timedelta(minutes=i + 1))
    history = d.status.history
    assert MAX_HISTORY == len(history) == RolloutStatus.model_fields["history"].metadata[0].max_length == 50
    assert history[-1].time == (T0 + timedelta(minutes=MAX_HISTORY + 5)).isoformat()
    RolloutStatus.model_validate(d.status.model_dump(by_alias=True, mode="json"))  # still a valid status


def test_a_history_message_is_cut_at_512_characters() -> None:
    d = plan(Rollout(steps=[10, 20]), active(), NEW, OLD, T0, analysis=verdict("Pass", "x" * 600))
    assert d.status.history[-1].message == ("analysis passed: " + "x" * 600)[:512]


def test_desired_traffic_before_anything_is_served_is_none() -> None:
    assert desired_traffic(None) is None
    assert desired_traffic(RolloutStatus()) is None
    assert desired_traffic(RolloutStatus(canary_storage_uri=NEW, step=0, canary_percent=10)) is None


def test_desired_traffic_of_an_active_step_without_a_percent_is_zero_canary() -> None:
    assert desired_traffic(active(percent=None)) == Traffic(OLD, NEW, 0)
    assert desired_traffic(active(percent=25)) == Traffic(OLD, NEW, 25)
    assert desired_traffic(RolloutStatus(stable_storage_uri=OLD, canary_storage_uri=NEW)) == Traffic(OLD)


def test_settled_only_speaks_when_nothing_is_in_flight() -> None:
    assert settled(None, NEW) is None
    assert settled(active(), NEW) is None
    assert settled(active(), OLD) is None
    serving = RolloutStatus(stable_storage_uri=NEW)
    assert settled(serving, NEW) == Decision(serving, "Serving", "Serving", f"serving {NEW}", False)
    rolled_back = RolloutStatus(stable_storage_uri=OLD, canary_storage_uri=NEW, canary_percent=0)
    assert settled(rolled_back, NEW) == Decision(
        rolled_back, "RolledBack", "RolledBack", f"{NEW} was rolled back", False
    )
    assert settled(rolled_back, NEWER) is None


def test_analysis_due_is_false_not_merely_falsy_and_counts_from_the_last_event() -> None:
    rollout = Rollout(interval="5m")
    assert analysis_due(rollout, None, T0) is False
    assert analysis_due(rollout.model_copy(update={"paused": True}), active(), T0) is False
    status = active(history=[RolloutEvent(time=T0.isoformat(), event="Started", percent=10)])
    assert analysis_due(rollout, status, T0 + timedelta(minutes=5)) is True
    assert analysis_due(rollout, status, T0 + timedelta(minutes=5) - timedelta(milliseconds=1)) is False
    assert analysis_due(rollout, active(), T0) is True  # no event and no analysis yet: nothing to wait for
    analysed = active(
        last_analysis=verdict("Inconclusive").model_copy(update={"time": (T0 + timedelta(minutes=3)).isoformat()})
    )
    assert analysis_due(rollout, analysed, T0 + timedelta(minutes=7)) is False
    assert analysis_due(rollout, analysed, T0 + timedelta(minutes=8)) is True


def test_immediate_promotes_again_when_the_service_serves_something_else() -> None:
    status = RolloutStatus(stable_storage_uri=NEW, failures=1)
    d = plan(Rollout(strategy="immediate"), status, NEW, OLD, T0)  # someone edited the InferenceService
    assert (d.phase, d.reason, d.message, d.changed) == (
        "RollingOut",
        "Promoted",
        f"serving {NEW} (strategy immediate)",
        True,
    )
    assert (d.status.failures, d.traffic) == (0, Traffic(NEW))
    assert d.status.history[-1] == RolloutEvent(time=T0.isoformat(), event="Promoted", message="strategy immediate")


def test_a_new_artifact_mid_rollout_restarts_with_a_clean_slate() -> None:
    d = plan(
        Rollout(steps=[10, 40]), active(step=1, percent=40, failures=1, last_analysis=verdict("Fail")), NEWER, OLD, T0
    )
    assert (d.phase, d.reason, d.message, d.changed) == (
        "RollingOut",
        "Restarted",
        "new artifact: canary restarts at 10%",
        True,
    )
    assert (d.status.step, d.status.canary_percent, d.status.failures, d.status.last_analysis) == (0, 10, 0, None)


def test_baseline_source_needs_a_source_uri() -> None:
    with pytest.raises(BaselineMissing, match="storageUri"):
        plan(Rollout(baseline="source"), None, NEW, OLD, T0, source_uri=None)


@pytest.mark.parametrize(
    ("status", "serving"),
    [(None, SRC), (RolloutStatus(stable_storage_uri=SRC), OLD)],
    ids=["served-but-not-recorded", "recorded-but-not-served"],
)
def test_baseline_source_is_served_and_recorded_before_the_canary(status, serving) -> None:
    old_history = [RolloutEvent(time=T0.isoformat(), event="Promoted", message="earlier")]
    status = (status or RolloutStatus()).model_copy(update={"history": old_history})
    d = plan(Rollout(baseline="source", steps=[20]), status, NEW, serving, T0, source_uri=SRC)
    message = f"serving the source {SRC} as stable"
    assert (d.phase, d.reason, d.message, d.changed) == ("RollingOut", "BaselineServed", message, True)
    assert d.traffic == Traffic(SRC)


def test_a_canary_start_says_what_it_started_even_with_earlier_history() -> None:
    earlier = RolloutStatus(
        stable_storage_uri=OLD, history=[RolloutEvent(time=T0.isoformat(), event="Promoted", message="earlier")]
    )
    d = plan(Rollout(steps=[10, 50]), earlier, NEW, OLD, T0)
    assert (d.phase, d.reason, d.message, d.changed) == (
        "RollingOut",
        "Started",
        f"canary {NEW} at 10% against {OLD}",
        True,
    )
    assert (d.status.failures, d.status.step, d.traffic) == (0, 0, Traffic(OLD, NEW, 10))


def test_every_verdict_changes_status_and_says_why() -> None:
    rollout = Rollout(steps=[10, 40], analysis={"failureLimit": 3})
    step = plan(rollout, active(), NEW, OLD, T0, analysis=verdict("Pass"))
    assert (step.phase, step.reason, step.message, step.changed) == (
        "RollingOut",
        "StepAdvanced",
        "canary at 40%",
        True,
    )
    failed = plan(rollout, active(), NEW, OLD, T0, analysis=verdict("Fail", "bad"))
    assert (failed.reason, failed.message, failed.changed) == ("AnalysisFailed", "analysis failed (1/3): bad", True)
    held = plan(rollout, active(), NEW, OLD, T0, analysis=verdict("Inconclusive", "quiet"))
    assert (held.reason, held.message, held.changed) == ("AnalysisInconclusive", "holding: quiet", True)


def test_promotion_after_a_failure_resets_the_failure_count() -> None:
    d = plan(
        Rollout(steps=[10, 40]), active(step=1, percent=40, failures=1), NEW, OLD, T0, analysis=verdict("Pass", "ok")
    )
    assert (d.phase, d.reason, d.message, d.changed) == ("Serving", "Promoted", f"promoted {NEW} to 100%", True)
    assert (d.status.failures, d.status.canary_percent, d.status.step, d.traffic) == (0, None, None, Traffic(NEW))


def test_a_rollback_leaves_no_canary_percent_behind() -> None:
    earlier = [
        RolloutEvent(time=T0.isoformat(), event="Started", percent=10, message="started"),
        RolloutEvent(time=T0.isoformat(), event="StepAdvanced", percent=40, message="advanced"),
    ]
    status = active(step=1, percent=40, failures=1, history=earlier)
    d = plan(
        Rollout(steps=[10, 40], analysis={"failureLimit": 2}), status, NEW, OLD, T0, analysis=verdict("Fail", "bad")
    )
    assert (d.phase, d.reason, d.message, d.changed) == ("RolledBack", "RolledBack", "analysis failed 2x: bad", True)
    assert (d.status.canary_percent, d.status.step, d.status.failures, d.traffic) == (0, None, 2, Traffic(OLD))
    assert d.status.history[-1].percent == 0
