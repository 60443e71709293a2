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

A settled model (promoted or rolled back, nothing new) costs nothing per tick: the raw
status says so before any parsing, and only a new ``metadata.generation`` (a serving
change such as autoscaling) makes the loop look at its InferenceService again.

When serving is disabled or removed while ``status.rollout`` is set, :func:`release`
deletes the InferenceService if ModelPress created it (owner reference), or leaves a
user's own InferenceService as it is and says so once; either way ``status.rollout`` is
cleared, so the loop stops looking at the model.
Talks to the API only through :class:`modelpress.operator.kube.Kube`, the one the
handlers' :class:`~modelpress.operator.context.Context` (kopf's memo) holds; phase changes
and their conditions are :mod:`~modelpress.operator.phases`'.
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
from modelpress.operator import context as context_mod
from modelpress.operator import handlers, phases
from modelpress.operator import inference_service as isvc_mod
from modelpress.operator import rollout as rollout_mod
from modelpress.operator import status as st
from modelpress.operator.context import Context
from modelpress.operator.kube import Conflict
from modelpress.operator.validation import SpecInvalid, parse_model

log = logging.getLogger(__name__)

# How often rollouts are looked at; the analysis itself runs once per spec interval.
ROLLOUT_TICK_SECONDS = float(os.environ.get("MODELPRESS_ROLLOUT_TICK_SECONDS", "10"))
# Predictor fields that say how to scale: a field the desired InferenceService leaves
# out is removed (null in the merge patch) so KServe does not see two ways to scale.
SCALING_FIELDS = ("autoScaling", "scaleMetric", "scaleTarget", "scaleMetricType")


def wants_rollout(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Serving enabled, compression validated, an artifact to serve.

    Asked of every model each tick, so it reads the raw status (no parsing), like
    :func:`wants_release` and :func:`is_settled`; what a tick then decides reads API types.
    """
    return (
        st.serving_enabled(spec)
        and status.get("phase") in phases.SERVABLE_PHASES
        and bool((status.get("artifact") or {}).get("storageUri"))
    )


def wants_release(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Serving turned off while a rollout status (and so maybe an InferenceService) exists."""
    return not st.serving_enabled(spec) and bool(status.get("rollout"))


def is_settled(status: Mapping[str, Any]) -> bool:
    """Promoted or rolled back, nothing in flight, the current artifact already judged.

    Cheap on purpose (the loop asks it of every model each tick): the phase is checked on
    the raw status and only ``status.rollout`` is parsed, never the whole model; the
    judgement itself is :func:`rollout.settled`'s.
    """
    if status.get("phase") not in phases.SETTLED_PHASES or not status.get("rollout"):
        return False
    try:
        rollout = api.RolloutStatus.model_validate(status["rollout"])
    except ValueError:
        return False  # not settled: tick() parses the whole status and reports the problem
    artifact = (status.get("artifact") or {}).get("storageUri") or ""
    return rollout_mod.settled(rollout, artifact) is not None


@kopf.on.startup()  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def start_rollout_loop(memo: kopf.Memo, models: kopf.Index, **_: Any) -> None:
    """One background loop over the handlers' index of models.

    Not a ``kopf.timer``: kopf gives every timed object a finalizer (a write to the
    object itself), while this operator writes only status, owned objects and Events.
    """
    ctx = context_mod.ensure(memo)
    ctx.rollout_loop = asyncio.create_task(rollout_loop(ctx, models), name="modelpress-rollout")


@kopf.on.cleanup()
async def stop_rollout_loop(memo: kopf.Memo, **_: Any) -> None:
    if context_mod.MEMO_KEY in memo:
        ctx = context_mod.of(memo)
        await handlers.stop_loop(ctx.rollout_loop)
        ctx.rollout_loop = None


async def rollout_loop(ctx: Context, models: kopf.Index) -> None:
    """Every tick, one :func:`tick` per model that wants serving; one model's error is
    logged and retried next tick, never stops the others."""
    while True:
        await asyncio.sleep(ROLLOUT_TICK_SECONDS)
        bodies = [body for _, store in list(models.items()) for body in store]
        if len(ctx.rollout_checked) > len(bodies):
            # A model's DELETED event takes its entry; one a tick wrote after that event
            # (the tick was awaiting the API) goes here, so there are never more than models.
            live = {body["metadata"].get("uid") for body in bodies}
            ctx.rollout_checked = {uid: gen for uid, gen in ctx.rollout_checked.items() if uid in live}
        for body in bodies:
            spec, status, meta = body.get("spec") or {}, body.get("status") or {}, body["metadata"]
            try:
                if wants_rollout(spec, status):
                    if is_settled(status) and ctx.rollout_checked.get(meta.get("uid")) == meta.get("generation"):
                        continue  # nothing new: no parsing, no API call
                    await tick(ctx, body)
                elif wants_release(spec, status):
                    await release(ctx, body)
            except Exception as exc:  # keep rolling the other models
                log.warning("rollout of %s/%s: %s", meta.get("namespace"), meta["name"], exc)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


async def _get_isvc(ctx: Context, namespace: str, name: str) -> dict[str, Any] | None:
    return await ctx.kube().find(isvc_mod.ISVC_API_VERSION, isvc_mod.ISVC_KIND, namespace, name)


def _traffic_fields(isvc: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """The parts of an InferenceService that carry the traffic split."""
    spec = (isvc or {}).get("spec") or {}
    predictor = spec.get("predictor") or {}
    canary = [
        (c.get("trafficPercent"), ((c.get("predictor") or {}).get("model") or {}).get("storageUri"))
        for c in spec.get("canary") or []
    ]
    model = predictor.get("model") or {}
    shadowing = (predictor.get("storageUris"), [a for a in model.get("args") or [] if _is_shadow_arg(a)])
    return (model.get("storageUri"), predictor.get("canaryTrafficPercent"), canary, shadowing)


def _is_shadow_arg(arg: Any) -> bool:
    return isinstance(arg, str) and arg.startswith("--shadow_")


def _keep_users_args(desired: dict[str, Any], existing: Mapping[str, Any] | None) -> dict[str, Any]:
    """``desired`` with the stable predictor's args made of the existing InferenceService's own
    (a user's, kept) plus the shadow flags the builder asks for; no ``args`` when both are none."""
    old = (((existing or {}).get("spec") or {}).get("predictor") or {}).get("model") or {}
    model = dict(desired["spec"]["predictor"]["model"])
    args = [a for a in old.get("args") or [] if not _is_shadow_arg(a)] + list(model.pop("args", []))
    if args:
        model["args"] = args
    predictor = {**desired["spec"]["predictor"], "model": model}
    return {**desired, "spec": {**desired["spec"], "predictor": predictor}}


def _contains(have: Any, want: Any) -> bool:
    """Every field of ``want`` is in ``have`` with the same value; fields KServe's webhook
    defaults on top (and that ModelPress does not set) do not count as a difference."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(_contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        same_length = isinstance(have, list) and len(have) == len(want)
        return same_length and all(_contains(h, w) for h, w in zip(have, want, strict=True))
    return have == want


def _matches(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return _traffic_fields(existing) == _traffic_fields(desired) and _contains(existing, desired)


async def _apply_isvc(ctx: Context, desired: dict[str, Any], existing: Mapping[str, Any] | None) -> None:
    """Create, or merge-patch so the managed fields match exactly (null removes a canary
    or a way of scaling the desired InferenceService no longer uses)."""
    meta = desired["metadata"]
    if existing is None:
        await ctx.kube().create(desired)
        return
    desired = _keep_users_args(desired, existing)
    if _matches(existing, desired):
        return
    spec = dict(desired["spec"])
    spec.setdefault("canary", None)
    # storageUri and storageUris exclude each other (a shadowing predictor has the latter):
    # the one not wanted is removed, and so are shadow flags no longer wanted.
    model = {"storageUri": None, "args": None, **spec["predictor"]["model"]}
    spec["predictor"] = {
        "canaryTrafficPercent": None, "storageUris": None, **{f: None for f in SCALING_FIELDS},
        **spec["predictor"], "model": model,
    }  # fmt: skip
    annotations: dict[str, Any] = dict(meta["annotations"])
    old_annotations = (existing.get("metadata") or {}).get("annotations") or {}
    keda = isvc_mod.AUTOSCALER_CLASS_ANNOTATION
    if old_annotations.get(keda) == "keda" and keda not in annotations:
        annotations[keda] = None  # no prometheus metric any more: back to KServe's default autoscaler
    patch = {"metadata": {"labels": meta["labels"], "annotations": annotations}, "spec": spec}
    await ctx.kube().merge_patch(isvc_mod.ISVC_API_VERSION, isvc_mod.ISVC_KIND, meta["namespace"], meta["name"], patch)


def _owned_by(isvc: Mapping[str, Any] | None, uid: str | None) -> bool:
    if isvc is None:
        return True  # ModelPress creates it
    refs = (isvc.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


async def _analyse(
    ctx: Context, model: api.CompressedModel, status: api.CompressedModelStatus, now: datetime.datetime
) -> api.AnalysisResult:
    assert model.spec.serving is not None and status.artifact is not None  # only a serving model is analysed
    rollout = model.spec.serving.rollout
    url = rollout.analysis.prometheus_url or ctx.settings.prometheus_url
    if not url:
        return api.AnalysisResult(
            time=now.isoformat(), verdict="Inconclusive",
            message="no Prometheus to ask: set serving.rollout.analysis.prometheusUrl or the operator's "
                    "--prometheus-url",
        )  # fmt: skip
    scope = analysis_mod.scope(
        isvc_mod.isvc_name(model), model.metadata.namespace or "default", ctx.settings.analysis_namespace_label
    )
    shadow = None
    if rollout.shadow is not None and status.rollout is not None:
        # The samples of the whole stage (or canary step) so far count together.
        window = rollout_mod.stage_window(status.rollout, now, rollout_mod.parse_duration(rollout.interval))
        shadow = analysis_mod.ShadowJudge(
            rollout.shadow, model.spec.source.task, analysis_mod.ShadowTarget(status.artifact.sha256, scope, window)
        )
        # urllib blocks: keep the event loop free for other models' events.
        if rollout_mod.in_shadow(status.rollout):
            return await asyncio.to_thread(analysis_mod.analyse_shadow, shadow, url, now)
        if not rollout.shadow.during_canary and model.spec.serving.deployment_mode == api.DeploymentMode.Standard.value:
            shadow = None
    target = analysis_mod.Target(canary_digest=status.artifact.sha256, scope=scope, window=rollout.interval)
    # Delayed feedback (clicks, revenue) keeps arriving for the whole step: count all of it so far.
    business_window = (
        rollout_mod.stage_window(status.rollout, now, rollout_mod.parse_duration(rollout.interval))
        if rollout.analysis.business is not None and status.rollout is not None
        else None
    )
    return await asyncio.to_thread(
        analysis_mod.analyse, rollout.analysis, url, target, now, shadow=shadow, business_window=business_window
    )


async def tick(ctx: Context, body: Mapping[str, Any]) -> None:
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
    try:  # a spec no InferenceService can be built from stops here, before any traffic decision
        isvc_mod.build_inference_service(model, rollout_mod.Traffic(status.artifact.storage_uri), ctx.settings)
    except isvc_mod.ServingConfigError as exc:
        await _report(ctx, body, status, status.phase, phases.CONFIG_INVALID, str(exc), None)
        return
    # It builds now: conditions still carrying that complaint are rewritten below even
    # when the rollout itself has nothing new to say.
    fixed = _rolled_out_reason(status) == phases.CONFIG_INVALID
    name = isvc_mod.isvc_name(model)
    isvc = await _get_isvc(ctx, ns, name)
    if is_settled(body.get("status") or {}):
        # Nothing to decide; a serving change (autoscaling, resources) may still need
        # applying to the InferenceService that is there (never re-created here).
        if isvc is not None:
            await _converge(ctx, body, model, status.rollout, isvc)
        said = rollout_mod.settled(status.rollout, status.artifact.storage_uri)
        if fixed and said and not await _report(ctx, body, status, said.phase, said.reason, said.message, None):
            return  # stale body: the next tick says it again
        ctx.rollout_checked[meta.get("uid")] = meta.get("generation")
        return
    analysis = None
    if rollout_mod.analysis_due(serving.rollout, status.rollout, now):
        analysis = await _analyse(ctx, model, status, now)
    try:
        decision = rollout_mod.plan(
            serving.rollout, status.rollout, status.artifact.storage_uri, isvc_mod.serving_uri(isvc), now,
            source_uri=model.spec.source.storage_uri, analysis=analysis, serving_ready=isvc_mod.is_ready(isvc),
        )  # fmt: skip
    except rollout_mod.BaselineMissing as exc:
        await _report(ctx, body, status, status.phase, "BaselineMissing", str(exc), None)
        return
    new_rollout = decision.status.model_copy(update={"inference_service": name})
    if decision.changed or new_rollout != status.rollout or fixed:
        if not await _report(ctx, body, status, decision.phase, decision.reason, decision.message, new_rollout):
            return  # decided on a stale body: the next tick decides on the current one
    await _converge(ctx, body, model, new_rollout, isvc)


def _rolled_out_reason(status: api.CompressedModelStatus) -> str | None:
    return next((c.reason for c in status.conditions if c.type == "RolledOut"), None)


async def _converge(
    ctx: Context,
    body: Mapping[str, Any],
    model: api.CompressedModel,
    rollout: api.RolloutStatus | None,
    isvc: Mapping[str, Any] | None,
) -> None:
    """Make the InferenceService carry the traffic ``rollout`` stands for."""
    traffic = rollout_mod.desired_traffic(rollout)
    if traffic is not None:
        desired = isvc_mod.build_inference_service(
            model, traffic, ctx.settings, owned=_owned_by(isvc, body["metadata"].get("uid"))
        )
        await _apply_isvc(ctx, desired, isvc)


async def release(ctx: Context, body: Mapping[str, Any]) -> None:
    """Serving was disabled or removed: take back what ModelPress put out.

    An InferenceService this CompressedModel owns is deleted (only that exact object: a
    uid precondition); someone else's is left as it is, said once in an Event. Either
    way ``status.rollout`` is cleared (which also ends this model's turns in the loop)
    and a model that was serving (or validated, waiting for its rollout) is ``Validated``,
    Ready as without serving (:func:`phases.serving_released`).
    """
    meta = body["metadata"]
    status = handlers.read_status(body)
    ns = meta.get("namespace") or "default"
    name = (status.rollout.inference_service if status.rollout else None) or meta["name"]
    isvc = await _get_isvc(ctx, ns, name)
    if isvc is not None and _owned_by(isvc, meta.get("uid")):
        deleted = await ctx.kube().delete(
            isvc_mod.ISVC_API_VERSION, isvc_mod.ISVC_KIND, ns, name, uid=isvc["metadata"].get("uid")
        )
        done = "deleted" if deleted else "is already gone"  # gone between the read and the delete
        reason, message = "ServingRemoved", f"serving disabled: InferenceService {ns}/{name} {done}"
    elif isvc is not None:
        reason = "ServingReleased"
        message = (
            f"serving disabled: InferenceService {ns}/{name} was not created by ModelPress, so it is left as it "
            f"is (serving {isvc_mod.serving_uri(isvc)}); delete it yourself if it should go"
        )
    else:
        reason, message = "ServingRemoved", f"serving disabled: InferenceService {ns}/{name} is already gone"
    change = phases.serving_released(status, reason, message)
    fields = change.patch(status, meta.get("generation"), handlers.now())
    try:
        await ctx.kube().patch_model_status(ns, meta["name"], fields, resource_version=meta.get("resourceVersion"))
    except Conflict:
        return  # decided on a stale body; the next tick sees the current one
    ctx.rollout_checked.pop(meta.get("uid"), None)
    await handlers.announce(ctx, body, change)


async def _report(
    ctx: Context,
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
    change = phases.rollout_report(status, phase, reason, message)
    same = st.same_conditions(phases.conditions_of(status), change.conditions)
    if rollout is None and status.phase == phase and same:
        return True  # the same complaint again: no write, no Event
    fields = change.patch(status, meta.get("generation"), handlers.now())
    if rollout is not None:
        # Nones stay in: a merge patch removes a field only when it says null.
        fields["rollout"] = rollout.model_dump(by_alias=True, mode="json")
    try:
        await ctx.kube().patch_model_status(
            meta.get("namespace") or "default", meta["name"], fields, resource_version=meta.get("resourceVersion")
        )
    except Conflict:
        return False
    if reason not in ("Waiting", "Paused", "Serving") or not same:
        await handlers.announce(ctx, body, change)
    return True
