"""The rollout state machine: pure functions from (spec, status, observation) to the next status.

Level-based and restart-safe by construction: the *only* state is ``status.rollout``.
The traffic the InferenceService should carry is a function of that status alone
(:func:`desired_traffic`), so the handler writes the new status first and then makes the
InferenceService match it; after a crash anywhere in between, the next tick applies the
same desired traffic again (idempotent) -- a step's traffic change is never skipped and
never applied twice as two different changes.

A rollout is *active* while ``step`` is set (stage Canary) or ``stage`` is Shadow. After a
rollback ``canaryStorageUri`` keeps the rejected artifact (with ``step`` and ``stage`` unset
and ``canaryPercent`` 0) so it is not retried; a different artifact starts a new rollout.

With ``rollout.shadow`` set, a new artifact first enters stage Shadow: it takes no user
traffic, the stable runtime runs a sample of its requests through it and compares. Each
analysis covers the whole stage so far (:func:`stage_window`: samples accumulate). Pass,
once ``duration`` has elapsed too, starts the canary at ``steps[0]``; Fail rolls back at
once (no user saw the candidate, and the agreement test already is a significance test,
so failureLimit does not apply); Inconclusive holds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeGuard

from modelpress.api import AnalysisResult, Rollout, RolloutEvent, RolloutStage, RolloutStatus
from modelpress.operator.analysis import shadow_summary

MAX_HISTORY = 50
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> timedelta:
    """``5m``, ``1h30m``, ``500ms`` (the API's DURATION_PATTERN) -> timedelta."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m)")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


@dataclass(frozen=True)
class Traffic:
    """What the InferenceService should serve."""

    stable_uri: str
    canary_uri: str | None = None
    canary_percent: int = 0
    # The candidate of stage Shadow, which the stable predictor shadows and no user gets
    # (during the canary, ``shadow.duringCanary`` makes the builder shadow ``canary_uri``).
    shadow_uri: str | None = None


@dataclass(frozen=True)
class Decision:
    """The next status plus what happened, for the condition/Event the handler writes."""

    status: RolloutStatus
    phase: str  # RollingOut | Serving | RolledBack
    reason: str  # CamelCase, e.g. StepAdvanced, Promoted, RolledBack, AnalysisInconclusive
    message: str
    changed: bool  # status changed (and maybe traffic): the handler patches

    @property
    def traffic(self) -> Traffic | None:
        return desired_traffic(self.status)


class BaselineMissing(Exception):
    """baseline: previous but nothing is being served to compare against."""


def desired_traffic(status: RolloutStatus | None) -> Traffic | None:
    """The traffic split that ``status`` stands for; None before anything is served."""
    if status is None or not status.stable_storage_uri:
        return None
    if in_shadow(status):
        return Traffic(status.stable_storage_uri, shadow_uri=status.canary_storage_uri)
    if status.step is not None and status.canary_storage_uri:
        return Traffic(status.stable_storage_uri, status.canary_storage_uri, status.canary_percent or 0)
    return Traffic(status.stable_storage_uri)


def in_shadow(status: RolloutStatus | None) -> TypeGuard[RolloutStatus]:
    """The candidate is in stage Shadow: compared on the stable model's requests, serving no user."""
    return status is not None and status.stage == RolloutStage.Shadow.value and bool(status.canary_storage_uri)


def is_active(status: RolloutStatus | None) -> TypeGuard[RolloutStatus]:
    """A rollout is in flight: a canary step, or the shadow stage (both with a candidate);
    True also tells the type checker status is set."""
    if in_shadow(status):
        return True
    return status is not None and status.step is not None and bool(status.canary_storage_uri)


def stage_started(status: RolloutStatus) -> datetime | None:
    """When the current stage (or canary step) began: its history event; analyses add none."""
    return datetime.fromisoformat(status.history[-1].time) if status.history else None


def stage_window(status: RolloutStatus, now: datetime, least: timedelta) -> str:
    """A PromQL range covering the current stage so far (at least ``least``), whole seconds
    rounded up, so that the shadow samples of the whole stage are counted together."""
    started = stage_started(status)
    span = max(now - started, least) if started else least
    return f"{math.ceil(span.total_seconds())}s"


def settled(status: RolloutStatus | None, artifact_uri: str) -> Decision | None:
    """Nothing in flight and ``artifact_uri`` judged already (promoted, or rolled back and
    not retried): what to say about it, with no change; None otherwise."""
    if status is None or is_active(status):
        return None
    if status.stable_storage_uri == artifact_uri:
        return Decision(status, "Serving", "Serving", f"serving {artifact_uri}", False)
    if status.canary_storage_uri == artifact_uri:  # rolled back earlier; do not retry it
        return Decision(status, "RolledBack", "RolledBack", f"{artifact_uri} was rolled back", False)
    return None


def _event(status: RolloutStatus, now: datetime, event: str, percent: int | None, message: str) -> list[RolloutEvent]:
    entry = RolloutEvent(time=now.isoformat(), event=event, percent=percent, message=message[:512])
    return [*status.history, entry][-MAX_HISTORY:]


def _update(status: RolloutStatus, now: datetime, event: str, message: str, **fields) -> RolloutStatus:
    new = status.model_copy(update=fields)
    return new.model_copy(update={"history": _event(status, now, event, new.canary_percent, message)})


def analysis_due(rollout: Rollout, status: RolloutStatus | None, now: datetime) -> bool:
    """An active, unpaused rollout whose current step has run for a full interval since
    the last traffic change or the last analysis."""
    if rollout.paused or not is_active(status):
        return False
    stamps = [datetime.fromisoformat(e.time) for e in status.history[-1:]]
    if status.last_analysis and status.last_analysis.time:
        stamps.append(datetime.fromisoformat(status.last_analysis.time))
    return not stamps or now >= max(stamps) + parse_duration(rollout.interval)


def plan(
    rollout: Rollout,
    status: RolloutStatus | None,
    artifact_uri: str,
    serving_uri: str | None,
    now: datetime,
    source_uri: str | None = None,
    analysis: AnalysisResult | None = None,
    serving_ready: bool = True,
) -> Decision:
    """The next rollout status.

    ``artifact_uri``: the validated artifact to roll out. ``serving_uri``: what the
    InferenceService serves as its stable model now (None when it does not exist).
    ``source_uri``: the uncompressed model, for ``baseline: source``. ``analysis``: the
    verdict of the interval that just ended (only when :func:`analysis_due` said so).
    ``serving_ready``: the InferenceService reports Ready for its current spec; a model
    is only ``Serving`` (and a source baseline only gets a canary) once it does.
    Raises :class:`BaselineMissing` when ``baseline: previous`` has nothing to compare to.
    """
    status = status or RolloutStatus()

    if rollout.strategy == "immediate":
        if status.stable_storage_uri == artifact_uri and serving_uri == artifact_uri:
            if not serving_ready:
                waiting = f"{artifact_uri} is set; waiting for the InferenceService to become Ready"
                return Decision(status, "RollingOut", "WaitingForReady", waiting, False)
            return Decision(status, "Serving", "Serving", f"serving {artifact_uri}", True)
        new = _update(
            status, now, "Promoted", "strategy immediate", stable_storage_uri=artifact_uri,
            canary_storage_uri=None, canary_percent=None, step=None, stage=None, failures=0,
        )  # fmt: skip
        return Decision(new, "RollingOut", "Promoted", f"serving {artifact_uri} (strategy immediate)", True)

    steps = rollout.steps
    if is_active(status) and status.canary_storage_uri != artifact_uri:
        # A new artifact mid-rollout: start over (in shadow, or at step 0) against the current stable.
        replaced = f"new artifact {artifact_uri} replaces candidate {status.canary_storage_uri}"
        if rollout.shadow is not None:
            new = _update(
                status, now, "Restarted", f"{replaced}; back to shadow", canary_storage_uri=artifact_uri,
                canary_percent=0, step=None, stage=RolloutStage.Shadow, failures=0, last_analysis=None,
            )  # fmt: skip
            return Decision(new, "RollingOut", "Restarted", "new artifact: the rollout restarts in shadow", True)
        new = _update(
            status, now, "Restarted", replaced, canary_storage_uri=artifact_uri, canary_percent=steps[0], step=0,
            stage=RolloutStage.Canary, failures=0, last_analysis=None,
        )  # fmt: skip
        return Decision(new, "RollingOut", "Restarted", f"new artifact: canary restarts at {steps[0]}%", True)

    if not is_active(status):
        if said := settled(status, artifact_uri):
            return said
        if rollout.baseline == "source":
            if not source_uri:
                raise BaselineMissing("baseline source needs the source model's storageUri")
            if serving_uri != source_uri or status.stable_storage_uri != source_uri:
                # First serve the uncompressed model alone; the canary starts once it serves.
                new = _update(
                    status, now, "BaselineServed", f"serving the source {source_uri} as stable",
                    stable_storage_uri=source_uri, canary_storage_uri=None, canary_percent=None, step=None,
                )  # fmt: skip
                return Decision(new, "RollingOut", "BaselineServed", new.history[-1].message, new != status)
            if not serving_ready:  # no canary against a baseline that does not serve yet
                waiting = f"waiting for the source {source_uri} to become Ready before the canary"
                return Decision(status, "RollingOut", "WaitingForReady", waiting, False)
            stable = source_uri
        else:
            if not serving_uri:
                raise BaselineMissing(
                    "baseline previous compares the canary with what the InferenceService serves now, "
                    "but it serves nothing yet: create it first, or set serving.rollout.baseline: source "
                    "or serving.rollout.strategy: immediate"
                )
            stable = serving_uri
        if rollout.shadow is not None:
            new = _update(
                status, now, "ShadowStarted", f"shadowing {artifact_uri} on {stable}'s requests",
                stable_storage_uri=stable, canary_storage_uri=artifact_uri, canary_percent=0, step=None,
                stage=RolloutStage.Shadow, failures=0, last_analysis=None,
            )  # fmt: skip
            return Decision(new, "RollingOut", "ShadowStarted", new.history[-1].message, True)
        new = _update(
            status, now, "Started", f"canary {artifact_uri} at {steps[0]}% against {stable}",
            stable_storage_uri=stable, canary_storage_uri=artifact_uri, canary_percent=steps[0], step=0,
            stage=RolloutStage.Canary, failures=0, last_analysis=None,
        )  # fmt: skip
        return Decision(new, "RollingOut", "Started", new.history[-1].message, True)

    # Active rollout of this artifact.
    if in_shadow(status):
        return _plan_shadow(rollout, status, now, analysis)
    if rollout.paused:
        return Decision(
            status, "RollingOut", "Paused", f"paused at step {status.step} ({status.canary_percent}%)", False
        )
    if analysis is None:
        return Decision(status, "RollingOut", "Waiting", f"canary at {status.canary_percent}%, analysis not due", False)
    step = status.step or 0
    if analysis.verdict == "Pass":
        if step + 1 < len(steps):
            new = _update(
                status, now, "StepAdvanced", f"analysis passed: {analysis.message}",
                step=step + 1, canary_percent=steps[step + 1], last_analysis=analysis,
            )  # fmt: skip
            return Decision(new, "RollingOut", "StepAdvanced", f"canary at {steps[step + 1]}%", True)
        new = _update(
            status, now, "Promoted", f"analysis passed at the last step: {analysis.message}",
            stable_storage_uri=status.canary_storage_uri, canary_storage_uri=None, canary_percent=None,
            step=None, stage=None, failures=0, last_analysis=analysis,
        )  # fmt: skip
        return Decision(new, "Serving", "Promoted", f"promoted {new.stable_storage_uri} to 100%", True)
    if analysis.verdict == "Fail":
        failures = status.failures + 1
        if failures >= rollout.analysis.failure_limit:
            new = _update(
                status, now, "RolledBack", f"analysis failed {failures}x: {analysis.message}",
                canary_percent=0, step=None, stage=None, failures=failures, last_analysis=analysis,
            )  # fmt: skip
            return Decision(new, "RolledBack", "RolledBack", new.history[-1].message, True)
        new = status.model_copy(update={"failures": failures, "last_analysis": analysis})
        return Decision(
            new, "RollingOut", "AnalysisFailed",
            f"analysis failed ({failures}/{rollout.analysis.failure_limit}): {analysis.message}", True,
        )  # fmt: skip
    new = status.model_copy(update={"last_analysis": analysis})
    return Decision(new, "RollingOut", "AnalysisInconclusive", f"holding: {analysis.message}", True)


def shadow_progress(status: RolloutStatus) -> str:
    """``in shadow: N samples, agreement x`` from the last analysis, for conditions while holding."""
    if status.last_analysis is None:
        return f"in shadow: {status.canary_storage_uri} not analysed yet"
    return f"in shadow: {shadow_summary(status.last_analysis.values)}"


def _plan_shadow(rollout: Rollout, status: RolloutStatus, now: datetime, analysis: AnalysisResult | None) -> Decision:
    """The next status of a candidate in stage Shadow (module docstring)."""
    steps = rollout.steps
    to_canary = {"canary_percent": steps[0], "step": 0, "stage": RolloutStage.Canary, "failures": 0}
    if rollout.shadow is None:  # the spec no longer asks for a shadow stage: go on to the canary
        new = _update(status, now, "Started", f"shadow removed from the spec: canary at {steps[0]}%", **to_canary)
        return Decision(new, "RollingOut", "Started", new.history[-1].message, True)
    if rollout.paused:
        return Decision(status, "RollingOut", "Paused", f"paused {shadow_progress(status)}", False)
    if analysis is None:
        return Decision(status, "RollingOut", "Waiting", f"{shadow_progress(status)}; analysis not due", False)
    held = status.model_copy(update={"last_analysis": analysis})
    if analysis.verdict == "Fail":
        new = _update(
            status, now, "ShadowFailed", f"shadow comparison failed: {analysis.message}",
            canary_percent=0, step=None, stage=None, last_analysis=analysis,
        )  # fmt: skip
        return Decision(new, "RolledBack", "ShadowFailed", new.history[-1].message, True)
    if analysis.verdict == "Pass":
        started = stage_started(status)
        left = (started + parse_duration(rollout.shadow.duration) - now) if started else timedelta(0)
        if left <= timedelta(0):
            new = _update(
                status, now, "ShadowPassed", f"shadow passed: {analysis.message}; canary at {steps[0]}%",
                last_analysis=analysis, **to_canary,
            )  # fmt: skip
            return Decision(new, "RollingOut", "ShadowPassed", new.history[-1].message, True)
        wait = f"{math.ceil(left.total_seconds())}s of duration {rollout.shadow.duration} left"
        return Decision(held, "RollingOut", "ShadowHolding", f"{shadow_progress(held)}; passing, {wait}", True)
    return Decision(held, "RollingOut", "ShadowHolding", f"{shadow_progress(held)}; {analysis.message}", True)
