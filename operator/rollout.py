"""The rollout state machine: pure functions from (spec, status, observation) to the next status.

Level-based and restart-safe by construction: the *only* state is ``status.rollout``.
The traffic the InferenceService should carry is a function of that status alone
(:func:`desired_traffic`), so the handler writes the new status first and then makes the
InferenceService match it; after a crash anywhere in between, the next tick applies the
same desired traffic again (idempotent) -- a step's traffic change is never skipped and
never applied twice as two different changes.

A rollout is *active* while ``step`` is set. After a rollback ``canaryStorageUri`` keeps
the rejected artifact (with ``step`` unset and ``canaryPercent`` 0) so it is not retried;
a different artifact starts a new rollout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeGuard

from modelpress.api import AnalysisResult, Rollout, RolloutEvent, RolloutStatus

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
    if status.step is not None and status.canary_storage_uri:
        return Traffic(status.stable_storage_uri, status.canary_storage_uri, status.canary_percent or 0)
    return Traffic(status.stable_storage_uri)


def is_active(status: RolloutStatus | None) -> TypeGuard[RolloutStatus]:
    """A canary is running (a step and a canary artifact); True also tells the type checker status is set."""
    return status is not None and status.step is not None and bool(status.canary_storage_uri)


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
            canary_storage_uri=None, canary_percent=None, step=None, failures=0,
        )  # fmt: skip
        return Decision(new, "RollingOut", "Promoted", f"serving {artifact_uri} (strategy immediate)", True)

    steps = rollout.steps
    if is_active(status) and status.canary_storage_uri != artifact_uri:
        # A new artifact mid-rollout: start over from step 0 against the current stable.
        new = _update(
            status, now, "Restarted", f"new artifact {artifact_uri} replaces canary {status.canary_storage_uri}",
            canary_storage_uri=artifact_uri, canary_percent=steps[0], step=0, failures=0, last_analysis=None,
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
        new = _update(
            status, now, "Started", f"canary {artifact_uri} at {steps[0]}% against {stable}",
            stable_storage_uri=stable, canary_storage_uri=artifact_uri, canary_percent=steps[0], step=0,
            failures=0, last_analysis=None,
        )  # fmt: skip
        return Decision(new, "RollingOut", "Started", new.history[-1].message, True)

    # Active rollout of this artifact.
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
            step=None, failures=0, last_analysis=analysis,
        )  # fmt: skip
        return Decision(new, "Serving", "Promoted", f"promoted {new.stable_storage_uri} to 100%", True)
    if analysis.verdict == "Fail":
        failures = status.failures + 1
        if failures >= rollout.analysis.failure_limit:
            new = _update(
                status, now, "RolledBack", f"analysis failed {failures}x: {analysis.message}",
                canary_percent=0, step=None, failures=failures, last_analysis=analysis,
            )  # fmt: skip
            return Decision(new, "RolledBack", "RolledBack", new.history[-1].message, True)
        new = status.model_copy(update={"failures": failures, "last_analysis": analysis})
        return Decision(
            new, "RollingOut", "AnalysisFailed",
            f"analysis failed ({failures}/{rollout.analysis.failure_limit}): {analysis.message}", True,
        )  # fmt: skip
    new = status.model_copy(update={"last_analysis": analysis})
    return Decision(new, "RollingOut", "AnalysisInconclusive", f"holding: {analysis.message}", True)
