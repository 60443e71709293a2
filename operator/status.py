"""Pure status logic: conditions by API conventions, and what a Job and its pods say
(a finished Job's outcome, a pod that cannot start).

No API calls: the handlers pass in what they observed and write what comes back. Which
phase may follow which, and the conditions of each change, are :mod:`phases`'.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from modelpress import api
from modelpress.operator.kube import ApiError, BadRequest, Invalid
from modelpress.summary import JobSummary, Outcome

# Ready's message for a validated model nobody asked to serve (here and when serving is turned off).
SERVING_DISABLED_MESSAGE = "validated; serving is disabled"
# Pod states that explain a failure better than the Job's own condition.
POD_FAILURE_REASONS = (
    "OOMKilled",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ContainerCannotRun",
    "Error",
)
# Waiting states a kubelet retries but that rarely clear by themselves: worth telling the
# user long before the Job's activeDeadlineSeconds turns them into a failure.
STUCK_CONTAINER_REASONS = (
    "InvalidImageName",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
)
# The scheduler's reason (pod condition PodScheduled=False) when no node fits the pod.
UNSCHEDULABLE_REASON = "Unschedulable"
# The Job controller's Event reason when the API server refuses the pods it creates.
FAILED_CREATE_REASON = "FailedCreate"
# Every reason :func:`stuck_pod` / :func:`pods_not_created` report; the Compressed condition
# goes back to JobRunning when it clears.
STUCK_POD_REASONS = (*STUCK_CONTAINER_REASONS, UNSCHEDULABLE_REASON, FAILED_CREATE_REASON)
# What usually makes pod creation fail for a compression Job, and the field that fixes it.
_FAILED_CREATE_HINTS = (
    ("service account", "set spec.job.serviceAccountName to a ServiceAccount that exists in the namespace"),
    ("PriorityClass", "set spec.job.priorityClassName to an existing PriorityClass"),
    ("exceeded quota", "the namespace's ResourceQuota is used up: lower spec.job.resources or raise the quota"),
)


def condition(type_: str, status: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True" if status else "False", "reason": reason, "message": message[:1024]}


def merge_conditions(
    old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]], generation: int | None, now: str
) -> list[dict[str, Any]]:
    """Conditions after applying ``new``: lastTransitionTime moves only when status flips."""
    merged = {c["type"]: dict(c) for c in old or []}
    for cond in new:
        previous = merged.get(cond["type"])
        entry = dict(cond, observedGeneration=generation)
        if previous and previous.get("status") == cond["status"] and previous.get("lastTransitionTime"):
            entry["lastTransitionTime"] = previous["lastTransitionTime"]
        else:
            entry["lastTransitionTime"] = now
        merged[cond["type"]] = entry
    return list(merged.values())


def same_conditions(old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]]) -> bool:
    """Would writing ``new`` change anything a reader sees (ignoring timestamps)?"""
    have = {c["type"]: c for c in old or []}
    return all(
        c["type"] in have and all(have[c["type"]].get(k) == c.get(k) for k in ("status", "reason", "message"))
        for c in new
    )


def is_refusal(exc: ApiError) -> bool:
    """400 (cannot be decoded) and 422 (invalid) are the API server refusing an object as
    built: retrying the same write cannot succeed. Others (403 quota, 409, 5xx) may pass later."""
    return isinstance(exc, (BadRequest, Invalid))


def job_finished(job: Mapping[str, Any]) -> str | None:
    """'Complete', 'Failed' or None (still running / suspended)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


def job_suspended(job: Mapping[str, Any]) -> bool:
    """Held back by ``spec.suspend`` (Kueue creates and preempts by suspending) and not yet finished."""
    return bool((job.get("spec") or {}).get("suspend")) and job_finished(job) is None


def stuck_pod(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) for the first unfinished pod that no node fits or whose container
    waits in a state from :data:`STUCK_CONTAINER_REASONS`, naming the pod, the image and
    the scheduler's or kubelet's explanation, and what to fix."""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        pod_name = (pod.get("metadata") or {}).get("name", "?")
        found = _unschedulable(pod_name, status) or _waiting_container(pod_name, pod.get("spec") or {}, status)
        if found is not None:
            return found
    return None


def pods_not_created(job_name: str, job_uid: str, events: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(FailedCreate, message) when the Job controller's latest word on this Job is that it
    cannot create its pod; the stuck-pod check sees no pod at all then, and without this the
    model would say running until ``activeDeadlineSeconds``."""
    mine = [
        e
        for e in events
        if e.get("reason") == FAILED_CREATE_REASON
        and (e.get("involvedObject") or {}).get("name") == job_name
        and (e.get("involvedObject") or {}).get("uid") in (None, job_uid)
    ]
    if not mine:
        return None
    latest = max(mine, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    text = str(latest.get("message") or "")
    hint = next((fix for needle, fix in _FAILED_CREATE_HINTS if needle in text), "")
    message = f"the Job controller cannot create the compression pod of Job {job_name}: {text}"
    return FAILED_CREATE_REASON, message + (f"; {hint}" if hint else "")


def _unschedulable(pod_name: str, status: Mapping[str, Any]) -> tuple[str, str] | None:
    """The scheduler found no node for the pod (PodScheduled=False, reason Unschedulable).

    Reported without waiting: the phase stays Compressing because the cluster autoscaler
    may still add a node that fits, and the report clears once the pod is scheduled.
    """
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            if cond.get("reason") != UNSCHEDULABLE_REASON:
                return None
            detail = f": {cond['message']}" if cond.get("message") else ""
            return UNSCHEDULABLE_REASON, (
                f"compression pod {pod_name} cannot be scheduled{detail}; check the GPU quota and the node pool "
                "for what spec.job.gpu and spec.job.resources ask, and that spec.job.nodeSelector and "
                "spec.job.tolerations match a node. The cluster autoscaler may still add a node; "
                "the Job fails at its activeDeadlineSeconds unless this clears"
            )
    return None


def _waiting_container(pod_name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[str, str] | None:
    """A container the kubelet cannot start: its image cannot be pulled or its configuration is missing.

    Init containers first: while one waits, the main container only shows PodInitializing.
    """
    images = {c.get("name"): c.get("image") for c in [*spec.get("initContainers", []), *spec.get("containers", [])]}
    for cs in _container_statuses(status):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in STUCK_CONTAINER_REASONS:
            continue
        image = images.get(cs.get("name")) or cs.get("image") or "?"
        detail = f": {waiting['message']}" if waiting.get("message") else ""
        fix = (
            "check the image name, that it exists and that the pod may pull it (imagePullSecrets)"
            if "Image" in reason
            else "check the Secrets and ConfigMaps the pod refers to"
        )
        return str(reason), (
            f"compression pod {pod_name}, image {image}: {reason}{detail}; {fix}. "
            "The Job fails at its activeDeadlineSeconds unless this clears"
        )
    return None


def job_failure_reason(job: Mapping[str, Any]) -> tuple[str, str]:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("reason") or "JobFailed"), str(cond.get("message") or "")
    return "JobFailed", ""


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Init containers' statuses (in the order they run), then the main containers'."""
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _terminated(cs: Mapping[str, Any]) -> Mapping[str, Any]:
    return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}


def termination_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The job summary from the newest pod that left one.

    The main (upload) container's message is the summary. A pod that never reached it
    stopped at a failing init container (download or compress), whose own termination
    message says why; a compress container that succeeded leaves none, so its outcome
    is never taken for what was uploaded. Pods of the older one-container layout carry
    the summary in their only container's message.
    """

    def started(pod: Mapping[str, Any]) -> str:
        return str(pod.get("metadata", {}).get("creationTimestamp") or "")

    for pod in sorted(pods, key=started, reverse=True):
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            if _terminated(cs).get("message"):
                return str(_terminated(cs)["message"])
        for cs in status.get("initContainerStatuses") or []:
            term = _terminated(cs)
            if term.get("exitCode") and term.get("message"):
                return str(term["message"])
    return None


def pod_failure_reason(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """OOMKilled, ImagePullBackOff... from container states (init containers too), most telling first."""
    seen: list[str] = []
    for pod in pods:
        for cs in _container_statuses(pod.get("status") or {}):
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                for key in ("terminated", "waiting"):
                    reason = (state.get(key) or {}).get("reason")
                    if reason:
                        seen.append(str(reason))
    return next((r for r in POD_FAILURE_REASONS if r in seen), None)


def parse_summary(message: str | None) -> JobSummary | None:
    if not message:
        return None
    try:
        return JobSummary.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None  # FallbackToLogsOnError: the message is the log tail, not a summary


def serving_enabled(spec: Mapping[str, Any]) -> bool:
    """``serving: {}`` means enabled (the API default); absent means no serving."""
    serving = spec.get("serving")
    return serving is not None and serving.get("enabled", True) is not False


def outcome_status(
    spec: Mapping[str, Any], job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]], tuple[str, str, str]]:
    """(status fields, new conditions, (event type, reason, message)) for a finished Job."""
    finished = job_finished(job)
    summary = parse_summary(termination_message(pods))
    fields: dict[str, Any] = {}
    if summary and summary.results:
        fields["results"] = rounded_results(summary.results.model_dump(by_alias=True, mode="json", exclude_none=True))

    if summary and summary.outcome == Outcome.validated.value and finished == "Complete":
        fields["phase"] = api.Phase.Validated.value
        if summary.artifact:
            fields["artifact"] = summary.artifact.model_dump(by_alias=True, mode="json")
        message = _results_line(summary)
        conds = [
            condition("Compressed", True, "JobSucceeded", message),
            condition("Validated", True, "ThresholdsMet", message),
        ]
        if serving_enabled(spec):
            conds.append(condition("Ready", False, "RolloutPending", "validated; waiting for the rollout"))
        else:
            conds.append(condition("Ready", True, "Validated", SERVING_DISABLED_MESSAGE))
        return fields, conds, ("Normal", "Validated", message)

    if summary and summary.outcome == Outcome.rejected.value:
        failed = summary.results.failed_thresholds if summary.results else []
        message = f"threshold exceeded: {', '.join(failed) or summary.reason}"
        if summary.reason and failed:
            message += f" ({summary.reason})"
        fields["phase"] = api.Phase.Rejected.value
        conds = [
            condition("Compressed", True, "JobSucceeded", "compression ran"),
            condition("Validated", False, "ThresholdExceeded", message),
            condition("Ready", False, "Rejected", message),
        ]
        return fields, conds, ("Warning", "Rejected", message)

    reason, message = _failure(job, pods, summary)
    fields["phase"] = api.Phase.Failed.value
    conds = [
        condition("Compressed", False, reason, message),
        condition("Validated", False, reason, "the compression did not finish, so nothing was validated"),
        condition("Ready", False, reason, message),
    ]
    return fields, conds, ("Warning", reason, message)


# Digits kept in status for the ratios `kubectl get cmodel` prints (CRD printer columns
# cannot format numbers; report.json keeps full precision).
RESULT_DIGITS = {"accuracyDrop": 4, "speedup": 2, "sizeRatio": 3}


def rounded_results(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with the printed ratios rounded: 0.0455, not 0.04549348699896045."""
    return {
        k: round(v, RESULT_DIGITS[k]) if k in RESULT_DIGITS and isinstance(v, float) else v for k, v in results.items()
    }


def _failure(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], summary: JobSummary | None) -> tuple[str, str]:
    pod_reason = pod_failure_reason(pods)
    job_reason, job_message = job_failure_reason(job)
    if summary and summary.outcome == Outcome.failed.value:
        return "JobFailed", summary.reason or "the compression job failed"
    if pod_reason and pod_reason != "Error":
        return pod_reason, f"compression pod: {pod_reason}" + (
            f"; job: {job_reason}" if job_reason != "JobFailed" else ""
        )
    if job_reason != "JobFailed":
        return job_reason, job_message or f"the Job failed: {job_reason}"
    if job_finished(job) == "Complete":
        return "NoSummary", "the Job succeeded but wrote no readable summary to its termination log"
    return "JobFailed", job_message or "the compression job failed without a summary; see its pod logs"


def _results_line(summary: JobSummary) -> str:
    r = summary.results
    if not r:
        return "validated"
    parts = []
    if r.accuracy_drop is not None:
        parts.append(f"accuracy drop {r.accuracy_drop:.4f}")
    if r.speedup is not None:
        parts.append(f"speedup {r.speedup:.2f}x")
    if r.size_ratio is not None:
        parts.append(f"size ratio {r.size_ratio:.2f}")
    return "validated: " + (", ".join(parts) or "all thresholds met")
