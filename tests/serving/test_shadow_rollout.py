"""The shadow stage in the pure rollout state machine: pass, fail, hold, restart, pause,
strategy immediate, and traffic as a function of status alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelpress.api import AnalysisResult, Rollout, RolloutStatus
from modelpress.operator.rollout import (
    Traffic,
    analysis_due,
    desired_traffic,
    in_shadow,
    is_active,
    plan,
    settled,
    stage_window,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OLD, NEW, NEWER = "s3://b/old/", "s3://b/new/", "s3://b/newer/"
SHADOWED = Rollout.model_validate(
    {
        "steps": [10, 50],
        "interval": "1m",
        "shadow": {"duration": "3m", "minSamples": 100},
        "analysis": {"failureLimit": 3},
    }
)


def verdict(v: str, at: datetime, **values: float) -> AnalysisResult:
    return AnalysisResult(time=at.isoformat(), verdict=v, values=values, message=f"{v.lower()} checks")


def start(rollout: Rollout = SHADOWED):
    return plan(rollout, None, NEW, OLD, T0)


def test_a_new_artifact_first_enters_shadow_with_no_user_traffic() -> None:
    d = start()
    s = d.status
    assert (d.reason, d.phase, s.stage, s.canary_percent, s.step) == ("ShadowStarted", "RollingOut", "Shadow", 0, None)
    assert s.canary_storage_uri == NEW and s.stable_storage_uri == OLD
    assert [e.event for e in s.history] == ["ShadowStarted"]
    assert d.traffic == Traffic(OLD, None, 0, shadow_uri=NEW)  # the candidate serves no user
    assert is_active(s) and in_shadow(s) and settled(s, NEW) is None


def test_pass_before_the_duration_holds_then_the_canary_starts_at_the_first_step() -> None:
    d = start()
    at = T0 + timedelta(minutes=1)
    assert analysis_due(SHADOWED, d.status, at)
    held = plan(SHADOWED, d.status, NEW, OLD, at, analysis=verdict("Pass", at, shadowSamples=150, shadowAgreement=1))
    assert (held.reason, held.status.stage, held.traffic) == ("ShadowHolding", "Shadow", d.traffic)
    assert held.message == "in shadow: 150 samples, agreement 1.0000; passing, 120s of duration 3m left"
    assert held.status.history == d.status.history  # an analysis is no stage change
    at = T0 + timedelta(minutes=3)
    passed = plan(SHADOWED, held.status, NEW, OLD, at, analysis=verdict("Pass", at, shadowSamples=400))
    s = passed.status
    assert (passed.reason, passed.phase, s.stage, s.step, s.canary_percent) == (
        "ShadowPassed", "RollingOut", "Canary", 0, 10,
    )  # fmt: skip
    assert passed.traffic == Traffic(OLD, NEW, 10)
    assert [e.event for e in s.history] == ["ShadowStarted", "ShadowPassed"]
    # The canary then runs as without shadow: step, promotion.
    at += timedelta(minutes=1)
    stepped = plan(SHADOWED, s, NEW, OLD, at, analysis=verdict("Pass", at))
    at += timedelta(minutes=1)
    promoted = plan(SHADOWED, stepped.status, NEW, OLD, at, analysis=verdict("Pass", at))
    assert (stepped.status.canary_percent, promoted.reason, promoted.status.stage) == (50, "Promoted", None)
    assert promoted.traffic == Traffic(NEW)


def test_a_shadow_failure_rolls_back_at_once_whatever_the_failure_limit() -> None:
    d = start()
    at = T0 + timedelta(minutes=1)
    failed = plan(SHADOWED, d.status, NEW, OLD, at, analysis=verdict("Fail", at, shadowAgreement=0.6))
    s = failed.status
    assert (failed.reason, failed.phase, s.stage, s.step, s.canary_percent) == (
        "ShadowFailed", "RolledBack", None, None, 0,
    )  # fmt: skip
    assert failed.message == "shadow comparison failed: fail checks" == s.history[-1].message
    assert s.last_analysis is not None and s.last_analysis.values == {"shadowAgreement": 0.6}
    assert failed.traffic == Traffic(OLD)  # no user ever saw it, nothing shadows any more
    assert not is_active(s) and settled(s, NEW) is not None  # and it is not retried
    assert plan(SHADOWED, s, NEW, OLD, at + timedelta(hours=1)).reason == "RolledBack"


def test_inconclusive_holds_in_shadow_however_long() -> None:
    d = start()
    for minute in range(1, 10):
        at = T0 + timedelta(minutes=minute)
        d = plan(SHADOWED, d.status, NEW, OLD, at, analysis=verdict("Inconclusive", at, shadowSamples=minute))
        assert (d.reason, d.status.stage, d.traffic) == ("ShadowHolding", "Shadow", Traffic(OLD, shadow_uri=NEW))
    assert d.message == "in shadow: 9 samples; inconclusive checks"


def test_waiting_and_paused_say_how_the_shadow_stands_and_change_nothing() -> None:
    d = start()
    at = T0 + timedelta(minutes=1)
    held = plan(SHADOWED, d.status, NEW, OLD, at, analysis=verdict("Inconclusive", at, shadowSamples=42))
    waiting = plan(SHADOWED, held.status, NEW, OLD, at + timedelta(seconds=5))
    assert (waiting.reason, waiting.changed) == ("Waiting", False)
    assert waiting.message == "in shadow: 42 samples; analysis not due"
    paused_rollout = SHADOWED.model_copy(update={"paused": True})
    assert not analysis_due(paused_rollout, held.status, at + timedelta(hours=1))
    paused = plan(paused_rollout, held.status, NEW, OLD, at + timedelta(hours=1))
    assert (paused.reason, paused.changed, paused.status) == ("Paused", False, held.status)
    assert paused.message == "paused in shadow: 42 samples"


def test_a_new_artifact_mid_rollout_restarts_in_shadow_from_either_stage() -> None:
    in_shadow_ = start().status
    at = T0 + timedelta(minutes=3)
    in_canary = plan(SHADOWED, in_shadow_, NEW, OLD, at, analysis=verdict("Pass", at)).status
    for status in (in_shadow_, in_canary):
        d = plan(SHADOWED, status, NEWER, OLD, at + timedelta(seconds=1))
        s = d.status
        assert (d.reason, s.stage, s.step, s.canary_percent, s.canary_storage_uri) == (
            "Restarted", "Shadow", None, 0, NEWER,
        )  # fmt: skip
        assert s.last_analysis is None and d.traffic == Traffic(OLD, shadow_uri=NEWER)
        # The new candidate's shadow window starts at the restart, not at the first ShadowStarted.
        assert stage_window(s, at + timedelta(seconds=61), timedelta(minutes=1)) == "60s"


def test_stage_window_covers_the_whole_stage_so_far_and_at_least_an_interval() -> None:
    s = start().status
    assert stage_window(s, T0 + timedelta(seconds=10), timedelta(minutes=1)) == "60s"
    assert stage_window(s, T0 + timedelta(minutes=7, milliseconds=200), timedelta(minutes=1)) == "421s"
    assert stage_window(RolloutStatus(), T0, timedelta(seconds=30)) == "30s"


def test_strategy_immediate_ignores_shadow() -> None:
    rollout = SHADOWED.model_copy(update={"strategy": "immediate"})
    d = plan(rollout, start().status, NEW, OLD, T0)
    assert (d.reason, d.status.stage, d.traffic) == ("Promoted", None, Traffic(NEW))


def test_without_shadow_the_canary_starts_at_once_in_stage_canary() -> None:
    d = plan(Rollout(steps=[10, 50]), None, NEW, OLD, T0)
    assert (d.reason, d.status.stage, d.traffic) == ("Started", "Canary", Traffic(OLD, NEW, 10))


def test_shadow_removed_from_the_spec_mid_shadow_goes_on_to_the_canary() -> None:
    d = plan(Rollout(steps=[10, 50]), start().status, NEW, OLD, T0 + timedelta(seconds=30))
    assert (d.reason, d.status.stage, d.traffic) == ("Started", "Canary", Traffic(OLD, NEW, 10))
    assert d.status.history[-1].message == "shadow removed from the spec: canary at 10%"


def test_traffic_is_a_function_of_status_alone_across_a_restart() -> None:
    """An operator restart re-reads status from the API: the same traffic comes out."""
    s = start().status
    again = RolloutStatus.model_validate(s.model_dump(by_alias=True, mode="json"))
    assert desired_traffic(again) == desired_traffic(s) == Traffic(OLD, shadow_uri=NEW)
    assert plan(SHADOWED, again, NEW, OLD, T0 + timedelta(seconds=5)).reason == "Waiting"  # no second ShadowStarted


MID = "s3://b/mid/"
T1 = T0 + timedelta(minutes=10)


def rolled_back_before() -> RolloutStatus:
    """An earlier candidate MID: shadow passed, then the canary failed 3x and rolled back."""
    s = plan(SHADOWED, None, MID, OLD, T0).status
    for minute, v in ((3, "Pass"), (4, "Fail"), (5, "Fail"), (6, "Fail")):
        at = T0 + timedelta(minutes=minute)
        s = plan(SHADOWED, s, MID, OLD, at, analysis=verdict(v, at)).status
    assert (s.failures, [e.event for e in s.history]) == (3, ["ShadowStarted", "ShadowPassed", "RolledBack"])
    return s


def veteran() -> RolloutStatus:
    """NEW in shadow after MID's rollout: a history of four events with different messages,
    so a decision's message can be told from any but the newest (the one it must repeat)."""
    d = plan(SHADOWED, rolled_back_before(), NEW, OLD, T1)
    assert d.message == "shadowing s3://b/new/ on s3://b/old/'s requests" == d.status.history[-1].message
    assert len({e.message for e in d.status.history}) == 4
    return d.status


def test_shadow_starts_after_a_rollback_with_a_fresh_failure_count_and_says_so() -> None:
    d = plan(SHADOWED, rolled_back_before(), NEW, OLD, T1)
    s = d.status
    assert (d.reason, d.changed, s.stage, s.canary_percent, s.step, s.failures) == (
        "ShadowStarted", True, "Shadow", 0, None, 0,
    )  # fmt: skip
    assert (d.message, len(s.history)) == ("shadowing s3://b/new/ on s3://b/old/'s requests", 4)


def test_a_restart_from_a_failing_canary_clears_the_failure_count() -> None:
    at = T1 + timedelta(minutes=3)
    canary = plan(SHADOWED, veteran(), NEW, OLD, at, analysis=verdict("Pass", at)).status
    at += timedelta(minutes=1)
    failing = plan(SHADOWED, canary, NEW, OLD, at, analysis=verdict("Fail", at)).status
    assert (failing.failures, failing.canary_percent) == (1, 10)
    d = plan(SHADOWED, failing, NEWER, OLD, at + timedelta(seconds=1))
    s = d.status
    assert (d.reason, d.changed, s.failures, s.canary_percent, s.stage) == ("Restarted", True, 0, 0, "Shadow")
    assert d.message == "new artifact: the rollout restarts in shadow"


def test_shadow_decisions_repeat_their_newest_history_event_and_say_they_changed() -> None:
    s = veteran()
    at = T1 + timedelta(minutes=1)
    failed = plan(SHADOWED, s, NEW, OLD, at, analysis=verdict("Fail", at))
    assert (failed.reason, failed.changed) == ("ShadowFailed", True)
    assert failed.message == "shadow comparison failed: fail checks" == failed.status.history[-1].message
    at = T1 + timedelta(minutes=3)
    passed = plan(SHADOWED, s, NEW, OLD, at, analysis=verdict("Pass", at))
    assert (passed.reason, passed.changed) == ("ShadowPassed", True)
    assert passed.message == "shadow passed: pass checks; canary at 10%" == passed.status.history[-1].message
    removed = plan(Rollout(steps=[10, 50]), s, NEW, OLD, at)
    assert (removed.reason, removed.changed) == ("Started", True)
    assert removed.message == "shadow removed from the spec: canary at 10%" == removed.status.history[-1].message


def test_holding_in_shadow_records_the_analysis_so_it_is_a_change() -> None:
    s = veteran()
    at = T1 + timedelta(minutes=1)
    for v in ("Pass", "Inconclusive"):  # passing before the duration is up, or not deciding
        d = plan(SHADOWED, s, NEW, OLD, at, analysis=verdict(v, at))
        assert (d.reason, d.changed, d.status.last_analysis, d.status.history) == (
            "ShadowHolding", True, verdict(v, at), s.history,
        )  # fmt: skip


def test_the_canary_starts_with_a_fresh_failure_count_whatever_the_shadow_status_says() -> None:
    """Status is read back from the API: a failure count in stage Shadow (an older operator, a
    hand edit) must not shorten the canary's failureLimit."""
    s = veteran().model_copy(update={"failures": 2})
    at = T1 + timedelta(minutes=3)
    passed = plan(SHADOWED, s, NEW, OLD, at, analysis=verdict("Pass", at))
    removed = plan(Rollout(steps=[10, 50]), s, NEW, OLD, at)
    assert [(d.reason, d.status.failures, d.status.step) for d in (passed, removed)] == [
        ("ShadowPassed", 0, 0), ("Started", 0, 0),
    ]  # fmt: skip


def test_a_shadow_status_without_history_cannot_hold_for_a_duration_it_cannot_measure() -> None:
    """No event says when the stage began (a hand-edited status): a Pass is taken as the end."""
    s = veteran().model_copy(update={"history": []})
    d = plan(SHADOWED, s, NEW, OLD, T1, analysis=verdict("Pass", T1))
    assert (d.reason, d.status.stage, d.status.canary_percent) == ("ShadowPassed", "Canary", 10)
