"""The CompressedModel's phase state machine: which phase may follow which, and what each change writes.

Pure: no API calls, no clock. The handlers observe (the model, its Job), :func:`decide` says
what the model needs next, and every status write is a :class:`Change` built here. A change
of phase goes through :func:`transition`, which refuses what :data:`TRANSITIONS` does not
list, so a new path through the phases is a new line in that table (and its test), not an
assignment somewhere in the handlers.

Phases are judged as the operator sees them: the handlers' index may lag the operator's
own last write, so a Job's outcome is checked against the phase of *its* recipe
(:func:`phase_of`), which is none yet when the index still shows an older recipe.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from modelpress import api
from modelpress.operator import status as st

P = api.Phase
# Phases after which the current recipe needs no more compression work.
DONE_PHASES = frozenset({P.Validated, P.Rejected, P.Failed, P.RollingOut, P.Serving, P.RolledBack})
# Phases in which a model's current Job exists and has not finished.
JOB_PHASES = frozenset({P.Queued, P.Compressing})
# Phases from which serving may proceed (compression finished with an artifact).
SERVABLE_PHASES = frozenset({P.Validated, P.RollingOut, P.Serving, P.RolledBack})
# Promoted or rolled back: the rollout loop has nothing to do until something changes.
SETTLED_PHASES = frozenset({P.Serving, P.RolledBack})
# No status yet (Pending is never written: it is what "no phase" is counted as).
NEW = frozenset({None, P.Pending})
ANY: frozenset[P | None] = NEW | frozenset(P)

# Reasons the Compressed condition carries while the Job is unfinished, or when it was refused.
SUSPENDED_REASON = "WaitingForKueue"
RUNNING_REASON = "JobRunning"
REFUSED_REASON = "JobRefused"
INVALID_REASON = "InvalidSpec"
# The rollout's complaint about a spec no InferenceService can be built from.
CONFIG_INVALID = "ServingConfigInvalid"
# Rollout reasons whose Event is a Warning.
WARNING_REASONS = frozenset(
    {"RolledBack", "AnalysisFailed", "BaselineMissing", "AnalysisInconclusive", "ShadowFailed", CONFIG_INVALID}
)


class Event(enum.Enum):
    """What moves a model from one phase to another."""

    SPEC_INVALID = "the spec cannot be compressed as written"
    CAP_FULL = "a new recipe waits: maxConcurrentJobs Jobs run already"
    JOB_CREATED = "the Job of a new recipe is created (suspended for Kueue, or running)"
    KUEUE_ADMITTED = "Kueue admitted (unsuspended) the Job"
    KUEUE_SUSPENDED = "Kueue suspended the running Job again (preemption)"
    JOB_REFUSED = "the API server refused the ConfigMap or Job as built"
    JOB_FINISHED = "the Job finished: its summary says validated, rejected or failed"
    ROLLOUT = "the rollout took a step, promoted or rolled back"
    SERVING_RELEASED = "serving was turned off: what ModelPress served is taken back"


@dataclass(frozen=True)
class Transition:
    """Where one :class:`Event` may take a model: from any of ``sources`` to any of ``targets``."""

    sources: frozenset[P | None]  # the phases it may start from
    targets: frozenset[P]  # the phases it may lead to


TRANSITIONS: Mapping[Event, Transition] = {
    # From anywhere: a spec edit can break any model, and a new recipe starts over.
    Event.SPEC_INVALID: Transition(ANY, frozenset({P.Failed})),
    Event.CAP_FULL: Transition(ANY, frozenset({P.Queued})),
    Event.JOB_CREATED: Transition(ANY, frozenset({P.Queued, P.Compressing})),
    Event.KUEUE_ADMITTED: Transition(frozenset({P.Queued}), frozenset({P.Compressing})),
    Event.KUEUE_SUSPENDED: Transition(frozenset({P.Compressing}), frozenset({P.Queued})),
    # From the phase written just before the create.
    Event.JOB_REFUSED: Transition(JOB_PHASES, frozenset({P.Failed})),
    # A Job is created after its recipe's phase says Queued or Compressing; NEW when the
    # index has not caught up with that write yet (see phase_of).
    Event.JOB_FINISHED: Transition(NEW | JOB_PHASES, frozenset({P.Validated, P.Rejected, P.Failed})),
    Event.ROLLOUT: Transition(SERVABLE_PHASES, frozenset({P.RollingOut, P.Serving, P.RolledBack})),
    Event.SERVING_RELEASED: Transition(SERVABLE_PHASES, frozenset({P.Validated})),
}


class Forbidden(Exception):
    """A phase change the state machine does not allow: a bug in a decision, never the user's."""


def _phase(value: str | P | None) -> P | None:
    return None if value is None else P(value)


def transition(event: Event, source: str | P | None, target: str | P) -> str:
    """``target``'s value when ``event`` may lead from ``source`` to it; :class:`Forbidden` otherwise."""
    allowed = TRANSITIONS[event]
    if _phase(source) not in allowed.sources or _phase(target) not in allowed.targets:
        raise Forbidden(f"{event.name}: {source or 'no phase'} -> {target} is not a transition of a CompressedModel")
    return P(target).value


def phase_of(status: api.CompressedModelStatus, recipe_hash: str | None) -> str | None:
    """The status's phase when it is about ``recipe_hash``; None when it says nothing of that recipe yet."""
    return status.phase if status.recipe_hash == recipe_hash else None


def progress_phase(suspended: bool) -> str:
    """The phase of a model whose Job exists unfinished: Queued while Kueue holds it suspended."""
    return P.Queued.value if suspended else P.Compressing.value


# --------------------------------------------------------------------------- conditions


def spec_valid() -> dict[str, Any]:
    """SpecValid=True: stamped with the generation of every status write made for a spec that parsed."""
    return st.condition("SpecValid", True, "Valid", "")


def progress_conditions(job_name: str, suspended: bool, queue: str | None = None) -> list[dict[str, Any]]:
    """Compressed and Ready of a model whose Job exists but has not finished.

    A suspended Job has no pod and uses no quota yet, so the model shows ``Queued``
    rather than ``Compressing`` until Kueue admits (unsuspends) it.
    """
    if suspended:
        where = f" in LocalQueue {queue}" if queue else ""
        message = f"compression Job {job_name} is suspended until Kueue admits it{where}"
        return [
            st.condition("Compressed", False, SUSPENDED_REASON, message),
            st.condition("Ready", False, "Queued", message),
        ]
    message = f"compression Job {job_name} is running"
    return [
        st.condition("Compressed", False, RUNNING_REASON, message),
        st.condition("Ready", False, "Compressing", message),
    ]


def conditions_of(status: api.CompressedModelStatus) -> list[dict[str, Any]]:
    """The status's conditions as written on the wire (for merging)."""
    return [c.model_dump(by_alias=True, exclude_none=True) for c in status.conditions]


def _condition(status: api.CompressedModelStatus, type_: str) -> api.Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def refused_by_server(status: api.CompressedModelStatus) -> bool:
    """The last attempt ended with the API server refusing the Job (see :func:`refused`)."""
    compressed = _condition(status, "Compressed")
    return status.phase == P.Failed.value and compressed is not None and compressed.reason == REFUSED_REASON


# --------------------------------------------------------------------------- changes


@dataclass(frozen=True)
class Change:
    """One status write: the phase it moves to (None keeps it), the conditions it sets,
    other status fields (None removes one) and the Event to post once it has landed."""

    phase: str | None
    conditions: Sequence[Mapping[str, Any]] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)
    event: tuple[str, str, str] | None = None  # (type, reason, message)

    def patch(self, status: api.CompressedModelStatus, generation: int | None, now: str) -> dict[str, Any]:
        """The merge patch of ``status``; a condition's lastTransitionTime moves only when it flips."""
        out = dict(self.fields)
        if self.phase is not None:
            out["phase"] = self.phase
        if self.conditions:
            out["conditions"] = st.merge_conditions(conditions_of(status), self.conditions, generation, now)
        return out


def invalid(status: api.CompressedModelStatus, generation: int | None, message: str) -> Change | None:
    """The spec cannot be compressed: Failed, no Job; None when the status says so already."""
    cond = [st.condition("SpecValid", False, INVALID_REASON, message)]
    if status.observed_generation == generation and st.same_conditions(conditions_of(status), cond):
        return None
    return Change(
        transition(Event.SPEC_INVALID, status.phase, P.Failed),
        [*cond, st.condition("Ready", False, INVALID_REASON, "fix the spec; no Job was started")],
        {"observedGeneration": generation, "recipeHash": None, "jobName": None},
        ("Warning", INVALID_REASON, message),
    )


def restamp(status: api.CompressedModelStatus, generation: int | None, serving: bool) -> Change:
    """A spec edit that keeps the recipe: the conditions this write stands for move to the new generation.

    A Validated model whose serving was turned off before any rollout is Ready without
    one (a model that was serving is released by the rollout loop).
    """
    conds = [spec_valid()]
    if status.phase == P.Validated.value and not serving:
        conds.append(st.condition("Ready", True, "Validated", st.SERVING_DISABLED_MESSAGE))
    return Change(None, conds, {"observedGeneration": generation})


def cap_full(status: api.CompressedModelStatus, generation: int | None, recipe_hash: str, cap: int) -> Change | None:
    """Queued by the operator's own cap (no Job yet); None when it is queued for this recipe already."""
    if status.phase == P.Queued.value and status.recipe_hash == recipe_hash:
        return None
    waiting = st.condition("Compressed", False, "Queued", f"waiting: {cap} compression Jobs already run")
    return Change(
        transition(Event.CAP_FULL, status.phase, P.Queued),
        [spec_valid(), waiting],
        {"observedGeneration": generation, "recipeHash": recipe_hash, "jobName": None},
    )


def job_created(
    status: api.CompressedModelStatus,
    generation: int | None,
    recipe_hash: str,
    job_name: str,
    suspended: bool,
    queue: str | None,
) -> Change:
    """The status written just before the Job of a new recipe is created: Compressing, or Queued for Kueue."""
    pending = st.condition("Validated", False, "Pending", "waiting for the compression Job")
    return Change(
        transition(Event.JOB_CREATED, status.phase, progress_phase(suspended)),
        [spec_valid(), *progress_conditions(job_name, suspended, queue), pending],
        {
            "observedGeneration": generation,
            "recipeHash": recipe_hash,
            "jobName": job_name,
            "artifact": None,
            "results": None,
        },
    )


def follow_job(status: api.CompressedModelStatus, job_name: str, suspended: bool, queue: str | None) -> Change | None:
    """Kueue admitted or suspended the Job: the phase it stands for; None when the status shows it already."""
    target = progress_phase(suspended)
    if status.phase == target:
        return None
    event = Event.KUEUE_SUSPENDED if suspended else Event.KUEUE_ADMITTED
    return Change(transition(event, status.phase, target), progress_conditions(job_name, suspended, queue))


def refused(source: str | None, generation: int | None, recipe_hash: str, http_status: int, message: str) -> Change:
    """The API server refused the ConfigMap or Job built from this spec: Failed, with its words.

    Without this the model would say Compressing for good (no Job exists to finish). The
    spec passed validation, so what the server refused is usually a ``spec.job`` field it
    checks more strictly (a rule ``modelpress validate`` does not know yet); editing the
    spec tries again even when the recipe is unchanged (:func:`decide`).
    ``source`` is the phase written just before the create.
    """
    text = f"the API server refused the compression Job ({http_status}): {message}; fix spec.job and apply again"
    return Change(
        transition(Event.JOB_REFUSED, source, P.Failed),
        [
            spec_valid(),
            st.condition("Compressed", False, REFUSED_REASON, text),
            st.condition("Validated", False, REFUSED_REASON, "nothing was compressed, so nothing was validated"),
            st.condition("Ready", False, REFUSED_REASON, text),
        ],
        {
            "observedGeneration": generation,
            "recipeHash": recipe_hash,
            "jobName": None,
            "artifact": None,
            "results": None,
        },
        ("Warning", REFUSED_REASON, text),
    )


def job_finished(
    status: api.CompressedModelStatus,
    generation: int | None,
    spec: Mapping[str, Any],
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    recipe_hash: str,
) -> Change:
    """The outcome of a finished Job, as its pods' summary tells it (:func:`status.outcome_status`)."""
    fields, conds, event = st.outcome_status(spec, job, pods)
    # A refusal created no Job, so a finished Job of the same recipe is a later attempt's
    # (the spec edit that retried it may not have reached the index yet).
    source = None if refused_by_server(status) else phase_of(status, recipe_hash)
    phase = transition(Event.JOB_FINISHED, source, fields.pop("phase"))
    fields.update({"observedGeneration": generation, "recipeHash": recipe_hash, "jobName": job["metadata"]["name"]})
    return Change(phase, [spec_valid(), *conds], fields, event)


def pods_stuck(status: api.CompressedModelStatus, stuck: tuple[str, str] | None) -> Change | None:
    """A Compressing model's pod cannot start (or it cleared): conditions only, the phase stays.

    The cluster autoscaler can add a node, a pull can succeed on the next try, a missing
    Secret can be created: the Job's activeDeadlineSeconds bounds the wait. None when the
    status says so already.
    """
    if stuck is not None:
        reason, message = stuck
        conds = [st.condition("Compressed", False, reason, message), st.condition("Ready", False, reason, message)]
    elif (compressed := _condition(status, "Compressed")) and compressed.reason in st.STUCK_POD_REASONS:
        conds = progress_conditions(status.job_name or "", False)  # it cleared
    else:
        return None
    if st.same_conditions(conditions_of(status), conds):
        return None
    return Change(None, conds, event=("Warning", *stuck) if stuck is not None else None)


def rollout_report(status: api.CompressedModelStatus, phase: str | None, reason: str, message: str) -> Change:
    """Ready and RolledOut after a rollout decision; ``phase`` is the rollout's (or the current one)."""
    ready = phase == P.Serving.value
    conds = [
        st.condition("Ready", ready, reason if not ready else "Serving", message),
        st.condition("RolledOut", ready, reason, message),
    ]
    kind = "Warning" if reason in WARNING_REASONS else "Normal"
    target = phase if phase == status.phase or phase is None else transition(Event.ROLLOUT, status.phase, phase)
    return Change(target, conds, event=(kind, reason, message))


def serving_released(status: api.CompressedModelStatus, reason: str, message: str) -> Change:
    """Serving was turned off: ``status.rollout`` goes; a model that was serving (or validated,
    waiting for its rollout) is Validated, Ready as without serving. Not while a new recipe compresses."""
    if status.phase not in SERVABLE_PHASES:
        return Change(None, (), {"rollout": None}, ("Normal", reason, message))
    return Change(
        transition(Event.SERVING_RELEASED, status.phase, P.Validated),
        [
            st.condition("Ready", True, "Validated", st.SERVING_DISABLED_MESSAGE),
            st.condition("RolledOut", False, "ServingDisabled", message),
        ],
        {"rollout": None},
        ("Normal", reason, message),
    )


# --------------------------------------------------------------------------- deciding


class JobState(NamedTuple):
    """What the handlers' index knows of one compression Job."""

    finished: str | None  # 'Complete', 'Failed' or None
    uid: str
    suspended: bool  # waiting for Kueue to admit it


class Step(enum.Enum):
    """What a model event does next (the handlers act on it)."""

    NOTHING = "the status says what the world is"
    RESTAMP = "write observedGeneration and the conditions that move with it"
    ENSURE_JOB = "create (or adopt) the Job the status speaks of: resumed after a crash between status and Job"
    COLLECT = "read the finished Job's outcome (its Job event was lost)"
    FOLLOW_JOB = "write the phase the unfinished Job stands for (its event came before this status)"
    START = "a new recipe (or a refused one, edited): queue it or create its Job"


@dataclass(frozen=True)
class Observed:
    """What one model event sees: the model's status and generation, and its recipe's Job."""

    status: api.CompressedModelStatus
    generation: int | None
    recipe_hash: str
    job_name: str
    serving: bool  # the spec asks for serving
    job: JobState | None  # the current recipe's Job, as the index has it
    created_here: bool  # this process created that Job; its first event may not have come yet
    collected: bool  # that Job's outcome is in status already


@dataclass(frozen=True)
class Decision:
    step: Step
    change: Change | None = None  # the write, for RESTAMP


def job_in_progress(status: api.CompressedModelStatus, job_name: str) -> bool:
    """The status says Job ``job_name`` exists and has not finished: Compressing, or Queued
    for Kueue (a model queued by the operator's own cap has no jobName yet)."""
    return status.phase == P.Compressing.value or (status.phase in JOB_PHASES and status.job_name == job_name)


def decide(seen: Observed) -> Decision:
    """The one next step of a model whose spec parsed (level-based: from what is seen, not from what happened)."""
    status, same_recipe = seen.status, seen.status.recipe_hash == seen.recipe_hash
    new_generation = status.observed_generation != seen.generation
    retry_refused = refused_by_server(status) and new_generation
    if same_recipe and status.phase in DONE_PHASES and not retry_refused:
        # Same recipe, result known: a serving-only (or no-op) change never recompresses.
        if not new_generation:
            return Decision(Step.NOTHING)
        return Decision(Step.RESTAMP, restamp(status, seen.generation, seen.serving))
    if same_recipe and job_in_progress(status, seen.job_name):
        job = seen.job
        if job is None and not seen.created_here:
            return Decision(Step.ENSURE_JOB)
        if job is not None and job.finished and not seen.collected:
            return Decision(Step.COLLECT)
        if job is not None and not job.finished and progress_phase(job.suspended) != status.phase:
            return Decision(Step.FOLLOW_JOB)
        if new_generation:
            # A spec edit that keeps the recipe (job, output or serving fields).
            return Decision(Step.RESTAMP, Change(None, [spec_valid()], {"observedGeneration": seen.generation}))
        return Decision(Step.NOTHING)
    return Decision(Step.START)
