"""The pure rollout state machine: every transition, restart safety, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from modelpress.api import AnalysisResult, Rollout, RolloutStatus
from modelpress.operator.inference_service import is_ready
from modelpress.operator.rollout import (
    BaselineMissing,
    Traffic,
    analysis_due,
    desired_traffic,
    parse_duration,
    plan,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OLD, NEW, NEWER, SRC = "s3://b/old/", "s3://b/new/", "s3://b/newer/", "s3://b/source/model.onnx"


def verdict(v: str, at: datetime = T0) -> AnalysisResult:
    return AnalysisResult(time=at.isoformat(), verdict=v, message=v)


def run(rollout: Rollout, verdicts: list[str], start: RolloutStatus | None = None):
    """Drive a rollout through verdicts, one per interval; returns (decisions, traffic seen)."""
    now = T0
    d = plan(rollout, start, NEW, OLD, now)
    decisions, traffic = [d], [d.traffic]
    for v in verdicts:
        now += parse_duration(rollout.interval)
        assert analysis_due(rollout, d.status, now)
        d = plan(rollout, d.status, NEW, OLD, now, analysis=verdict(v, now))
        decisions.append(d)
        traffic.append(d.traffic)
    return decisions, traffic


def test_good_canary_walks_every_step_then_promotes():
    decisions, traffic = run(Rollout(steps=[10, 25, 50], interval="1m"), ["Pass", "Pass", "Pass"])
    assert [t.canary_percent for t in traffic] == [10, 25, 50, 0]
    assert traffic[-1] == Traffic(NEW)  # 100 %, canary removed
    assert [d.reason for d in decisions] == ["Started", "StepAdvanced", "StepAdvanced", "Promoted"]
    assert decisions[-1].phase == "Serving"
    assert [e.event for e in decisions[-1].status.history] == ["Started", "StepAdvanced", "StepAdvanced", "Promoted"]


def test_failures_roll_back_at_the_failure_limit_and_are_not_retried():
    rollout = Rollout(steps=[10, 50], interval="30s", analysis={"failureLimit": 2})
    decisions, traffic = run(rollout, ["Fail", "Inconclusive", "Fail"])
    assert [d.reason for d in decisions] == ["Started", "AnalysisFailed", "AnalysisInconclusive", "RolledBack"]
    assert [t.canary_percent for t in traffic] == [10, 10, 10, 0]  # failures hold the step
    assert traffic[-1] == Traffic(OLD)  # traffic back to stable
    assert decisions[-1].phase == "RolledBack" and decisions[-1].status.failures == 2
    # The same artifact again: stays rolled back, no new rollout.
    again = plan(rollout, decisions[-1].status, NEW, OLD, T0 + timedelta(hours=1))
    assert (again.phase, again.changed, again.traffic) == ("RolledBack", False, Traffic(OLD))


def test_inconclusive_never_promotes():
    rollout = Rollout(steps=[50], interval="10s")
    decisions, traffic = run(rollout, ["Inconclusive"] * 5)
    assert {d.phase for d in decisions} == {"RollingOut"}
    assert all(t.canary_percent == 50 for t in traffic)
    assert decisions[-1].status.last_analysis.verdict == "Inconclusive"


def test_analysis_waits_a_full_interval_after_each_change():
    rollout = Rollout(steps=[10, 20], interval="5m")
    d = plan(rollout, None, NEW, OLD, T0)
    assert not analysis_due(rollout, d.status, T0 + timedelta(minutes=4))
    assert analysis_due(rollout, d.status, T0 + timedelta(minutes=5))
    inconclusive = plan(
        rollout,
        d.status,
        NEW,
        OLD,
        T0 + timedelta(minutes=5),
        analysis=verdict("Inconclusive", T0 + timedelta(minutes=5)),
    )
    assert not analysis_due(rollout, inconclusive.status, T0 + timedelta(minutes=9))
    assert analysis_due(rollout, inconclusive.status, T0 + timedelta(minutes=10))


def test_pause_holds_and_unpause_resumes():
    rollout = Rollout(steps=[10, 20], interval="1m")
    d = plan(rollout, None, NEW, OLD, T0)
    paused = rollout.model_copy(update={"paused": True})
    later = T0 + timedelta(minutes=10)
    assert not analysis_due(paused, d.status, later)
    held = plan(paused, d.status, NEW, OLD, later, analysis=verdict("Pass"))
    assert (held.reason, held.changed, held.traffic.canary_percent) == ("Paused", False, 10)
    resumed = plan(rollout, d.status, NEW, OLD, later, analysis=verdict("Pass"))
    assert resumed.traffic.canary_percent == 20


def test_new_artifact_mid_rollout_restarts_from_step_zero_against_current_stable():
    rollout = Rollout(steps=[10, 30, 60], interval="1m")
    decisions, _ = run(rollout, ["Pass"])
    assert decisions[-1].traffic.canary_percent == 30
    restarted = plan(rollout, decisions[-1].status, NEWER, OLD, T0 + timedelta(minutes=3))
    assert restarted.reason == "Restarted"
    assert restarted.traffic == Traffic(OLD, NEWER, 10)
    assert restarted.status.failures == 0 and restarted.status.step == 0


def test_restart_safe_replaying_a_tick_from_status_changes_nothing():
    """The operator restarting between 'status written' and 'traffic applied' re-derives
    the same traffic from status; a tick that is not due changes nothing."""
    rollout = Rollout(steps=[10, 30], interval="1m")
    decisions, traffic = run(rollout, ["Pass"])
    status = RolloutStatus.model_validate(decisions[-1].status.model_dump(by_alias=True, mode="json"))
    assert desired_traffic(status) == traffic[-1] == Traffic(OLD, NEW, 30)
    replay = plan(rollout, status, NEW, OLD, T0 + timedelta(minutes=1, seconds=5))
    assert not replay.changed and replay.traffic == traffic[-1]


def test_immediate_strategy_swaps_storage_uri_then_waits_for_ready():
    d = plan(Rollout(strategy="immediate"), None, NEW, OLD, T0)
    assert (d.phase, d.reason, d.traffic) == ("RollingOut", "Promoted", Traffic(NEW))
    waiting = plan(Rollout(strategy="immediate"), d.status, NEW, NEW, T0, serving_ready=False)
    assert (waiting.phase, waiting.reason, waiting.changed) == ("RollingOut", "WaitingForReady", False)
    assert waiting.traffic == Traffic(NEW)  # the patch stays; only the verdict waits
    ready = plan(Rollout(strategy="immediate"), d.status, NEW, NEW, T0, serving_ready=True)
    assert (ready.phase, ready.reason, ready.changed) == ("Serving", "Serving", True)
    assert ready.status == d.status  # reaching Serving rewrites no rollout history


def test_baseline_source_canary_waits_until_the_source_is_ready():
    rollout = Rollout(baseline="source", steps=[20])
    first = plan(rollout, None, NEW, None, T0, source_uri=SRC)
    held = plan(rollout, first.status, NEW, SRC, T0 + timedelta(seconds=5), source_uri=SRC, serving_ready=False)
    assert (held.reason, held.traffic, held.changed) == ("WaitingForReady", Traffic(SRC), False)


@pytest.mark.parametrize(
    ("status", "generation", "ready"),
    [
        ({"conditions": [{"type": "Ready", "status": "True"}]}, 3, True),  # no observedGeneration reported
        ({"conditions": [{"type": "Ready", "status": "True"}], "observedGeneration": 3}, 3, True),
        ({"conditions": [{"type": "Ready", "status": "True"}], "observedGeneration": 2}, 3, False),  # stale
        ({"conditions": [{"type": "Ready", "status": "False"}], "observedGeneration": 3}, 3, False),
        ({}, 1, False),
    ],
)
def test_inference_service_ready_means_ready_for_the_current_spec(status, generation, ready):
    isvc = {"metadata": {"name": "m", "generation": generation}, "status": status}
    assert is_ready(isvc) is ready
    assert is_ready(None) is False


def test_baseline_source_serves_the_source_first():
    rollout = Rollout(baseline="source", steps=[20])
    first = plan(rollout, None, NEW, None, T0, source_uri=SRC)
    assert (first.reason, first.traffic) == ("BaselineServed", Traffic(SRC))
    second = plan(rollout, first.status, NEW, SRC, T0 + timedelta(seconds=5), source_uri=SRC)
    assert (second.reason, second.traffic) == ("Started", Traffic(SRC, NEW, 20))


def test_baseline_previous_without_an_inference_service_is_a_clear_error():
    with pytest.raises(BaselineMissing, match="baseline: source"):
        plan(Rollout(), None, NEW, None, T0)


def test_steps_that_are_not_increasing_are_rejected_by_the_api():
    with pytest.raises(ValidationError, match="strictly increasing"):
        Rollout(steps=[50, 20])


def test_parse_duration():
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 minutes")
