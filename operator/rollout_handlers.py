"""The rollout loop for serving and progressive rollout: thin glue around the pure parts.

Every ``ROLLOUT_TICK_SECONDS`` each CompressedModel whose compression is done and whose
spec asks for serving (from the handlers' in-memory index, no extra reads) gets one
:func:`tick`:

1. read the InferenceService (the only extra API read),
2. when the current step has run a full ``interval``, ask Prometheus for a verdict
   (:mod:`~modelpress.operator.analysis`),
3. :func:`~modelpress.operator.rollout.plan` the next ``status.rollout``,
4. write status first, then make the InferenceService match the traffic that status
   stands for (:func:`~modelpress.operator.inference_service.build_inference_service`).

Because the InferenceService is always made to match ``status.rollout`` (not a remembered
step), a restart between 3 and 4 simply re-applies the same traffic on the next tick.
Talks to the API only through :class:`modelpress.operator.kube.Kube`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from modelpress import api
from modelpress.operator import analysis as analysis_mod
from modelpress.operator import handlers
from modelpress.operator import inference_service as isvc_mod
from modelpress.operator import rollout as rollout_mod
from modelpress.operator import status as st
from modelpress.operator.kube import ApiError, Conflict, resource_path
from modelpress.operator.validation import SpecInvalid, parse_model

log = logging.getLogger(__name__)

# How often rollouts are looked at; the analysis itself runs once per spec interval.
ROLLOUT_TICK_SECONDS = float(os.environ.get("MODELPRESS_ROLLOUT_TICK_SECONDS", "10"))
ISVC_PLURAL = "inferenceservices"
# Phases from which serving may proceed (compression finished with an artifact).
SERVABLE_PHASES = frozenset(
    {
        api.Phase.Validated.value,
        api.Phase.RollingOut.value,
        api.Phase.Serving.value,
        api.Phase.RolledBack.value,
    }
)
WARNING_REASONS = frozenset({"RolledBack", "AnalysisFailed", "BaselineMissing", "AnalysisInconclusive"})


def wants_rollout(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Serving enabled, compression validated, an artifact to serve."""
    return (
        st.serving_enabled(spec)
        and status.get("phase") in SERVABLE_PHASES
        and bool((status.get("artifact") or {}).get("storageUri"))
    )


@kopf.on.startup()
async def start_rollout_loop(models: kopf.Index, **_: Any) -> None:
    """One background loop over the handlers' index of models.

    Not a ``kopf.timer``: kopf gives every timed object a finalizer (a write to the
    object itself), while this operator writes only status, owned objects and Events.
    """
    LOOP.task = asyncio.create_task(rollout_loop(models), name="modelpress-rollout")


@kopf.on.cleanup()
async def stop_rollout_loop(**_: Any) -> None:
    if LOOP.task is not None:
        LOOP.task.cancel()
        await asyncio.gather(LOOP.task, return_exceptions=True)
        LOOP.task = None


class _Loop:
    task: asyncio.Task | None = None


LOOP = _Loop()


async def rollout_loop(models: kopf.Index) -> None:
    """Every tick, one :func:`tick` per model that wants serving; one model's error is
    logged and retried next tick, never stops the others."""
    while True:
        await asyncio.sleep(ROLLOUT_TICK_SECONDS)
        bodies = [body for _, store in list(models.items()) for body in store]
        for body in bodies:
            if not wants_rollout(body.get("spec") or {}, body.get("status") or {}):
                continue
            try:
                await tick(body)
            except Exception as exc:  # keep rolling the other models
                log.warning("rollout of %s/%s: %s", body["metadata"].get("namespace"), body["metadata"]["name"], exc)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _isvc_path(namespace: str, name: str | None = None) -> str:
    return resource_path(isvc_mod.ISVC_API_VERSION, ISVC_PLURAL, namespace, name)


async def _get_isvc(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await handlers.kube().request("GET", _isvc_path(namespace, name))
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _traffic_fields(isvc: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """The parts of an InferenceService that carry the traffic split."""
    spec = (isvc or {}).get("spec") or {}
    predictor = spec.get("predictor") or {}
    canary = [
        (c.get("trafficPercent"), ((c.get("predictor") or {}).get("model") or {}).get("storageUri"))
        for c in spec.get("canary") or []
    ]
    return ((predictor.get("model") or {}).get("storageUri"), predictor.get("canaryTrafficPercent"), canary)


async def _apply_isvc(desired: dict[str, Any], existing: Mapping[str, Any] | None) -> None:
    """Create, or merge-patch so the traffic fields match exactly (null removes a canary)."""
    meta = desired["metadata"]
    if existing is None:
        await handlers.kube().request(
            "POST", _isvc_path(meta["namespace"]), desired, params={"fieldManager": "modelpress-operator"}
        )
        return
    if _traffic_fields(existing) == _traffic_fields(desired):
        return
    spec = dict(desired["spec"])
    spec.setdefault("canary", None)
    spec["predictor"] = dict(spec["predictor"])
    spec["predictor"].setdefault("canaryTrafficPercent", None)
    patch = {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]}, "spec": spec}
    await handlers.kube().request(
        "PATCH",
        _isvc_path(meta["namespace"], meta["name"]),
        patch,
        content_type="application/merge-patch+json",
        params={"fieldManager": "modelpress-operator"},
    )


def _owned_by(isvc: Mapping[str, Any] | None, uid: str | None) -> bool:
    if isvc is None:
        return True  # ModelPress creates it
    refs = (isvc.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


async def _analyse(
    model: api.CompressedModel, status: api.CompressedModelStatus, now: datetime.datetime
) -> api.AnalysisResult:
    rollout = model.spec.serving.rollout
    url = rollout.analysis.prometheus_url or handlers.STATE.settings.prometheus_url
    if not url:
        return api.AnalysisResult(
            time=now.isoformat(), verdict="Inconclusive",
            message="no Prometheus to ask: set serving.rollout.analysis.prometheusUrl or the operator's "
                    "--prometheus-url",
        )  # fmt: skip
    target = analysis_mod.Target(
        canary_digest=status.artifact.sha256,
        scope=f'model="{isvc_mod.isvc_name(model)}"',
        window=rollout.interval,
    )
    # urllib blocks: keep the event loop free for other models' events.
    return await asyncio.to_thread(analysis_mod.analyse, rollout.analysis, url, target, now)


async def tick(body: Mapping[str, Any]) -> None:
    """One rollout step for one model (see the module docstring)."""
    meta = body["metadata"]
    ns = meta.get("namespace") or "default"
    try:
        model = parse_model(body)
        status = api.CompressedModelStatus.model_validate(body.get("status") or {})
    except (SpecInvalid, ValueError):
        return  # the main reconcile reports spec problems
    if model.spec.serving is None or not model.spec.serving.enabled or not status.artifact:
        return
    serving, now = model.spec.serving, _now()
    if _settled(status):
        return  # promoted or rolled back, nothing new: no API call at all
    name = isvc_mod.isvc_name(model)
    isvc = await _get_isvc(ns, name)
    analysis = None
    if rollout_mod.analysis_due(serving.rollout, status.rollout, now):
        analysis = await _analyse(model, status, now)
    try:
        decision = rollout_mod.plan(
            serving.rollout, status.rollout, status.artifact.storage_uri, isvc_mod.serving_uri(isvc), now,
            source_uri=model.spec.source.storage_uri, analysis=analysis, serving_ready=isvc_mod.is_ready(isvc),
        )  # fmt: skip
    except rollout_mod.BaselineMissing as exc:
        await _report(body, status, status.phase, "BaselineMissing", str(exc), None)
        return
    new_rollout = decision.status.model_copy(update={"inference_service": name})
    if decision.changed or new_rollout != status.rollout:
        if not await _report(body, status, decision.phase, decision.reason, decision.message, new_rollout):
            return  # decided on a stale body: the next tick decides on the current one
    traffic = rollout_mod.desired_traffic(new_rollout)
    if traffic is not None:
        desired = isvc_mod.build_inference_service(
            model, traffic, handlers.STATE.settings, owned=_owned_by(isvc, meta.get("uid"))
        )
        await _apply_isvc(desired, isvc)


def _settled(status: api.CompressedModelStatus) -> bool:
    """The artifact was promoted or rolled back and nothing is in flight."""
    r, artifact = status.rollout, status.artifact.storage_uri
    return (
        r is not None
        and not rollout_mod.is_active(r)
        and artifact in (r.stable_storage_uri, r.canary_storage_uri)
        and status.phase in (api.Phase.Serving.value, api.Phase.RolledBack.value)
    )


async def _report(
    body: Mapping[str, Any],
    status: api.CompressedModelStatus,
    phase: str | None,
    reason: str,
    message: str,
    rollout: api.RolloutStatus | None,
) -> bool:
    """Status (phase, rollout, conditions) and one Event per change of reason/message.

    The write is conditional on the resourceVersion the decision was made on, so a
    decision from a stale body (the index lags our own last write) never lands twice.
    Returns False when it did not land.
    """
    meta = body["metadata"]
    ns, gen = meta.get("namespace") or "default", meta.get("generation")
    ready = phase == api.Phase.Serving.value
    conds = [
        st.condition("Ready", ready, reason if not ready else "Serving", message),
        st.condition("RolledOut", ready, reason, message),
    ]
    old_conditions = (body.get("status") or {}).get("conditions")
    fields: dict[str, Any] = {
        "phase": phase,
        "conditions": st.merge_conditions(old_conditions, conds, gen, handlers.now()),
    }
    if rollout is not None:
        # Nones stay in: a merge patch removes a field only when it says null.
        fields["rollout"] = rollout.model_dump(by_alias=True, mode="json")
    if rollout is None and status.phase == phase and st.same_conditions(old_conditions, conds):
        return True  # the same complaint again: no write, no Event
    try:
        await handlers.kube().patch_model_status(ns, meta["name"], fields, resource_version=meta.get("resourceVersion"))
    except Conflict:
        return False
    if reason not in ("Waiting", "Paused", "Serving") or not st.same_conditions(old_conditions, conds):
        await handlers.kube().post_event(body, "Warning" if reason in WARNING_REASONS else "Normal", reason, message)
    return True
