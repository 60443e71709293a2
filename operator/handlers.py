"""kopf handlers: thin glue between watch events and the pure logic.

Level-based, in the manner of controller-runtime: every event of a CompressedModel
runs :func:`reconcile`, which compares the observed status with what the spec asks
for and does only the missing step (:func:`phases.decide` says which; every status
write is a :class:`phases.Change`). Low-level ``on.event`` handlers (not kopf's
create/update handlers) are used on purpose: they keep no progress annotations on
the object, so the operator's only writes are the ConfigMap, the Job, status and
Events — GitOps tools see no drift and a thousand models cost few API calls.

Settings, the API client and what the process remembers come in through kopf's
``memo`` (:mod:`modelpress.operator.context`). ``kopf run -m modelpress.operator.handlers``
works too; settings then come from the ``MODELPRESS_*`` environment (see
:mod:`modelpress.operator.settings`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from modelpress import api
from modelpress.operator import context as context_mod
from modelpress.operator import job_builder, metrics, phases
from modelpress.operator import settings as settings_mod
from modelpress.operator import status as st
from modelpress.operator.context import Context
from modelpress.operator.job_slots import JobSlots
from modelpress.operator.kube import ApiError, Conflict, Kube, NotFound
from modelpress.operator.phases import JobState, Step
from modelpress.operator.validation import SpecInvalid, format_problems, parse_model

log = logging.getLogger(__name__)
JOB_SELECTOR = {job_builder.LABEL_MODEL: kopf.PRESENT}
JOB_NAME_LABEL = "job-name"  # set on its pods by the Job controller
# Events field selectors: https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/
FAILED_CREATE_SELECTOR = f"involvedObject.kind=Job,reason={st.FAILED_CREATE_REASON}"
CONFLICT_ATTEMPTS = 3
# Job names per pod list of the pod check: only the pods of Compressing models are listed
# (not every finished compression pod), in answers and URLs of bounded size.
POD_LIST_CHUNK = 100
# How long kopf keeps an object's worker after its last event (see startup).
WORKER_IDLE_SECONDS = 0.5


class NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled" state, so kopf builds no essence (a deep copy of the body) per event.

    kopf diffs the old and new essence of every object on every event for its change and
    daemon handlers; event handlers get no diff. With only event handlers registered the
    diff is never read, and building it was a fifth of the operator's CPU at a thousand models.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure(settings: settings_mod.Settings) -> kopf.Memo:
    """Used by ``modelpress operator``: the memo to start kopf with (``kopf.run(memo=...)``)."""
    return context_mod.memo_for(settings)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_status(body: Mapping[str, Any]) -> api.CompressedModelStatus:
    """The model's status as API types.

    One that does not read (written by hand through the status subresource) counts as
    none: the next step is then decided from the world (the Job, if any, is adopted).
    """
    try:
        return api.CompressedModelStatus.model_validate(body.get("status") or {})
    except ValidationError as exc:
        log.warning("%s: unreadable status, decided as if empty: %s", body["metadata"]["name"], exc)
        return api.CompressedModelStatus()


def _key(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body["metadata"]
    return meta.get("namespace") or "default", meta["name"]


# --------------------------------------------------------------------------- lifecycle


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credentials, shared with :mod:`kube` so there is one identity.

    The service account in a pod, else ``$KUBECONFIG``/~/.kube/config (read at call time,
    unlike the kubernetes client's default path, which is fixed at import). kopf logs in
    again when its credentials stop working: the one client then switches to the new
    ones and closes its old session once calls on it have ended (:meth:`Kube.login`).
    """
    conn = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if conn is not None:
        ctx = context_mod.ensure(memo)
        if ctx.client is None:
            ctx.client = Kube(conn)
        else:
            ctx.client.login(conn)
    return conn


@kopf.on.startup()  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, models: kopf.Index, compression_jobs: kopf.Index, **_: Any
) -> None:
    ctx = context_mod.ensure(memo)
    settings.posting.enabled = False  # our Events go through kube.py, one per outcome
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # kopf keeps a worker per object for idle_timeout after its last event (5 s by default),
    # holding that event: when thousands of models arrive at once that is the operator's
    # peak memory. A model's next event usually comes from our own write, well within this.
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # kopf deep-copies every body on every event to diff it for change handlers; this
    # operator has none (only on.event handlers, which get no diff), so there is nothing to diff.
    settings.persistence.diffbase_storage = NoDiffBase()
    # Server-side selector: only compression Jobs reach the operator, not every Job in the cluster.
    settings.watching.label_selectors["batch", "jobs"] = job_builder.LABEL_MODEL
    settings.peering.standalone = ctx.settings.standalone
    settings.peering.name = ctx.settings.peering_name
    metrics.reset()
    if ctx.settings.metrics_port:
        ctx.metrics_server = metrics.serve(ctx.settings.metrics_port)
    ctx.pod_check = asyncio.create_task(pod_check_loop(ctx, models, compression_jobs), name="modelpress-pod-check")


async def stop_loop(task: asyncio.Task | None) -> None:
    """Cancel a background loop and wait until it has ended (so no call outlives the client)."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if context_mod.MEMO_KEY not in memo:
        return  # startup never ran
    ctx = context_mod.of(memo)
    await stop_loop(ctx.pod_check)
    ctx.pod_check = None
    if ctx.client is not None:
        await ctx.client.close()
    if ctx.metrics_server is not None:
        ctx.metrics_server.shutdown()
        ctx.metrics_server.server_close()
        ctx.metrics_server = None


# --------------------------------------------------------------------------- indexes


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def models(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Latest body of every model, so a Job event needs no extra GET.

    Async on purpose here and below: kopf runs sync handlers in a thread pool, which costs
    more than the work itself at a thousand models.
    """
    return {(namespace, name): {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}


@kopf.index("batch", "v1", "jobs", labels=JOB_SELECTOR)  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def compression_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], JobState]:
    """Every compression Job's :class:`phases.JobState`."""
    return {(namespace, name): JobState(st.job_finished(body), str(body.metadata.uid), st.job_suspended(body))}


def _first(index: kopf.Index, key: Any) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def _slots(ctx: Context, jobs: kopf.Index, models: kopf.Index) -> JobSlots:
    """The cap's book-keeping, made from the indexes on first use (kopf runs no handler before
    they are filled), so a restarted operator counts what the cluster runs; per event after that."""
    if not ctx.slots.built:
        ctx.slots.rebuild(
            ((key, next(iter(store), None)) for key, store in list(jobs.items())),
            ((key, body) for key, store in list(models.items()) for body in store),
        )
    return ctx.slots


# --------------------------------------------------------------------------- models


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def model_event(
    event: Mapping[str, Any], memo: kopf.Memo, compression_jobs: kopf.Index, models: kopf.Index, **_: Any
) -> None:
    ctx = context_mod.of(memo)
    body = event["object"]
    meta = body["metadata"]
    deleted = event.get("type") == "DELETED"
    _slots(ctx, compression_jobs, models).model_seen(_key(body), None if deleted else body)
    if deleted:
        metrics.forget_model(meta.get("namespace", ""), meta["name"])
        ctx.rollout_checked.pop(meta.get("uid"), None)
        return
    metrics.RECONCILES.labels("model").inc()
    metrics.observe_model(meta.get("namespace", ""), meta["name"], body.get("status"))
    if meta.get("deletionTimestamp"):
        return  # owned objects go by garbage collection; nothing to hold it for
    try:
        for _attempt in range(CONFLICT_ATTEMPTS):
            if await reconcile(ctx, body, compression_jobs, models):
                return
            # Our status write met a newer version: decide again on the latest object.
            try:
                body = await ctx.kube().get(api.API_VERSION, api.KIND, *_key(body))
            except NotFound:
                return  # deleted meanwhile
    except Exception:
        metrics.ERRORS.labels("model").inc()
        raise


async def reconcile(ctx: Context, body: Mapping[str, Any], jobs: kopf.Index, models: kopf.Index) -> bool:
    """Make the world match the spec: one Job per distinct recipe, status to match.

    Decide (:func:`phases.decide`), then act. Returns False when a conditional status
    write lost a race (409); the caller then reconciles the latest version instead.
    """
    try:
        model = parse_model(body)
    except SpecInvalid as exc:
        await _report_invalid(ctx, body, exc)
        return True
    status = read_status(body)
    seen = _observe(ctx, model, body, status, jobs)
    decision = phases.decide(seen)
    match decision.step:
        case Step.RESTAMP:
            assert decision.change is not None  # decide() sets the write for RESTAMP
            await _patch(ctx, body, status, decision.change)
        case Step.ENSURE_JOB:
            await _ensure_job(ctx, model, body, status, status.phase, jobs, models)
        case Step.COLLECT:
            job = await ctx.kube().get("batch/v1", "Job", _key(body)[0], seen.job_name)
            await collect(ctx, job, jobs, models, body)
        case Step.FOLLOW_JOB:
            suspended = seen.job is not None and seen.job.suspended
            return await _follow_job(ctx, body, status, seen.job_name, suspended, model.spec.job.queue_name)
        case Step.START:
            return await _start(ctx, model, body, status, seen, jobs, models)
    return True


def _observe(
    ctx: Context,
    model: api.CompressedModel,
    body: Mapping[str, Any],
    status: api.CompressedModelStatus,
    jobs: kopf.Index,
) -> phases.Observed:
    ns = _key(body)[0]
    recipe_hash = api.recipe_hash(model.spec)
    job_name = job_builder.job_name(model.metadata.name, recipe_hash)
    job: JobState | None = _first(jobs, (ns, job_name))
    return phases.Observed(
        status=status,
        generation=body["metadata"].get("generation"),
        recipe_hash=recipe_hash,
        job_name=job_name,
        serving=model.spec.serving is not None and model.spec.serving.enabled,
        job=job,
        created_here=(ns, job_name) in ctx.slots.started,
        collected=job is not None and job.uid in ctx.collected,
    )


async def _start(
    ctx: Context,
    model: api.CompressedModel,
    body: Mapping[str, Any],
    status: api.CompressedModelStatus,
    seen: phases.Observed,
    jobs: kopf.Index,
    models: kopf.Index,
) -> bool:
    """A new recipe: Queued while the cap is full, else its status first and then its Job."""
    key = (_key(body)[0], seen.job_name)
    slots = _slots(ctx, jobs, models)
    async with ctx.cap_lock:
        job = job_builder.build_job(model, ctx.settings)
        if slots.over_cap(ctx.settings.max_concurrent_jobs, key):
            queued = phases.cap_full(status, seen.generation, seen.recipe_hash, ctx.settings.max_concurrent_jobs)
            return queued is None or await _write(ctx, body, status, queued)
        slots.start(key, st.job_suspended(job), _first(jobs, key))
    try:
        change = phases.job_created(
            status, seen.generation, seen.recipe_hash, seen.job_name, st.job_suspended(job), model.spec.job.queue_name
        )
        if not await _write(ctx, body, status, change):
            slots.forget(key, _first(jobs, key))
            return False
        await _ensure_job(ctx, model, body, status, change.phase, jobs, models, job)
        return True
    except Exception:
        slots.forget(key, _first(jobs, key))
        raise


async def _write(
    ctx: Context, body: Mapping[str, Any], status: api.CompressedModelStatus, change: phases.Change
) -> bool:
    """Status write only onto the version we decided on; False when it moved meanwhile."""
    ns, name = _key(body)
    meta = body["metadata"]
    try:
        await ctx.kube().patch_model_status(
            ns, name, change.patch(status, meta.get("generation"), now()), resource_version=meta.get("resourceVersion")
        )
    except Conflict:
        log.debug("%s/%s changed while reconciling; the next event decides", ns, name)
        return False
    return True


async def _patch(
    ctx: Context, body: Mapping[str, Any], status: api.CompressedModelStatus, change: phases.Change
) -> dict[str, Any]:
    """Status write whatever the version (a 409 is retried): what the write says holds for any newer one."""
    fields = change.patch(status, body["metadata"].get("generation"), now())
    await ctx.kube().patch_model_status(*_key(body), fields)
    return fields


async def announce(ctx: Context, body: Mapping[str, Any], change: phases.Change) -> None:
    """The change's Event, once its status write has landed."""
    if change.event is not None:
        await ctx.kube().post_event(body, *change.event)


async def _ensure_job(
    ctx: Context,
    model: api.CompressedModel,
    body: Mapping[str, Any],
    status: api.CompressedModelStatus,
    written: str | None,
    jobs: kopf.Index,
    models: kopf.Index,
    job: Mapping[str, Any] | None = None,
) -> None:
    """ConfigMap + Job (``job``, else built now); an existing one (restart) is adopted and, if done, collected.

    When the API server refuses either as built, the model is Failed with the server's
    words. ``written`` is the phase the status says now (written just before, for a new Job).
    """
    job = job or job_builder.build_job(model, ctx.settings)
    try:
        await ctx.kube().create(job_builder.build_config_map(model, ctx.settings))
        job, created = await ctx.kube().create(job)
    except ApiError as exc:
        if not st.is_refusal(exc):
            raise
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"])
        _slots(ctx, jobs, models).forget(key, _first(jobs, key))
        gen = body["metadata"].get("generation")
        change = phases.refused(written, gen, meta["labels"][job_builder.LABEL_HASH], exc.status, exc.message)
        fields = await _patch(ctx, body, status, change)
        metrics.observe_model(*_key(body), fields)
        await announce(ctx, body, change)
        return
    if created:
        metrics.JOBS_CREATED.inc()
    elif st.job_finished(job):
        await collect(ctx, job, jobs, models, body)


async def _report_invalid(ctx: Context, body: Mapping[str, Any], exc: SpecInvalid) -> None:
    status = read_status(body)
    change = phases.invalid(status, body["metadata"].get("generation"), format_problems(exc.problems))
    if change is not None:
        await _patch(ctx, body, status, change)
        await announce(ctx, body, change)


# --------------------------------------------------------------------------- jobs


@kopf.on.event("batch", "v1", "jobs", labels=JOB_SELECTOR)  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def job_event(
    event: Mapping[str, Any], memo: kopf.Memo, compression_jobs: kopf.Index, models: kopf.Index, **_: Any
) -> None:
    ctx = context_mod.of(memo)
    job = event["object"]
    meta = job["metadata"]
    key = (meta.get("namespace") or "default", meta["name"])
    slots = _slots(ctx, compression_jobs, models)
    if event.get("type") == "DELETED":
        # Gone, collected or not: nothing more to remember, and a slot if it held one.
        held = key in slots.running
        slots.forget(key, None)
        ctx.collected.discard(meta.get("uid", meta["name"]))
        if held:
            await _release_queue(ctx, compression_jobs, models)
        return
    slots.job_seen(key, _first(compression_jobs, key))  # before anything that can fail
    metrics.RECONCILES.labels("job").inc()
    try:
        if st.job_finished(job):
            await collect(ctx, job, compression_jobs, models)
        else:
            await _job_progress(ctx, job, compression_jobs, models)
    except Exception:
        metrics.ERRORS.labels("job").inc()
        raise


async def collect(
    ctx: Context,
    job: Mapping[str, Any],
    jobs: kopf.Index,
    models: kopf.Index,
    model_body: Mapping[str, Any] | None = None,
) -> None:
    """Read a finished Job's summary into its model's status, once."""
    meta = job["metadata"]
    ns, jname, uid = meta.get("namespace") or "default", meta["name"], meta.get("uid", meta["name"])
    labels = meta.get("labels") or {}
    model_name, jhash = labels.get(job_builder.LABEL_MODEL), labels.get(job_builder.LABEL_HASH)
    if uid in ctx.collected or not model_name:
        return
    body = model_body or _first(models, (ns, model_name))
    if body is None:
        return  # the model is gone; its Job goes by garbage collection
    try:
        current = api.recipe_hash(parse_model(body).spec)
    except SpecInvalid:
        return
    status = read_status(body)
    ctx.collected.add(uid)  # claimed before any await: a concurrent event must not collect it twice
    _slots(ctx, jobs, models).forget((ns, jname), _first(jobs, (ns, jname)))
    done = status.phase in phases.DONE_PHASES and not phases.refused_by_server(status)  # a refusal had no Job
    if current != jhash or (status.recipe_hash == jhash and done):
        return  # an old recipe's Job, or already collected before a restart

    try:
        pods = await ctx.kube().list("v1", "Pod", ns, f"{JOB_NAME_LABEL}={jname}")
        gen = body["metadata"].get("generation")
        change = phases.job_finished(status, gen, body.get("spec") or {}, job, pods, jhash)
        fields = await _patch(ctx, body, status, change)
    except Exception:
        ctx.collected.discard(uid)  # let the next event of the model or the Job try again
        raise
    metrics.JOB_DURATION.labels(change.phase).observe(_duration(job))
    metrics.observe_model(ns, model_name, fields)
    await announce(ctx, body, change)
    await _release_queue(ctx, jobs, models)


async def _job_progress(ctx: Context, job: Mapping[str, Any], jobs: kopf.Index, models: kopf.Index) -> None:
    """An unfinished Job was suspended or admitted (Kueue): its model shows Queued or Compressing.

    A running Job that Kueue suspends again (preemption) frees its slot under the cap.
    """
    meta = job["metadata"]
    labels = meta.get("labels") or {}
    body = _first(models, (meta.get("namespace") or "default", labels.get(job_builder.LABEL_MODEL)))
    if body is None:
        return
    status = read_status(body)
    if not phases.job_in_progress(status, meta["name"]):
        return
    suspended = st.job_suspended(job)
    await _follow_job(ctx, body, status, meta["name"], suspended, labels.get(job_builder.KUEUE_QUEUE_LABEL))
    if suspended and status.phase == api.Phase.Compressing.value:
        await _release_queue(ctx, jobs, models)


async def _follow_job(
    ctx: Context,
    body: Mapping[str, Any],
    status: api.CompressedModelStatus,
    jname: str,
    suspended: bool,
    queue: str | None,
) -> bool:
    """Write the phase an unfinished Job stands for, if the status shows another one.

    False when the model changed meanwhile (its next event decides again).
    """
    change = phases.follow_job(status, jname, suspended, queue)
    return change is None or await _write(ctx, body, status, change)


# --------------------------------------------------------------------------- pods


async def pod_check_loop(ctx: Context, models: kopf.Index, jobs: kopf.Index) -> None:
    """Every ``settings.pod_check_seconds``, :func:`check_pods`; an error is logged and retried next time.

    A loop over the index rather than a Pod watch: a list of the pods of Compressing
    models (per namespace, :data:`POD_LIST_CHUNK` Jobs at a time) costs less than a watch
    over every compression pod's status changes.
    """
    while True:
        await asyncio.sleep(ctx.settings.pod_check_seconds)
        try:
            await check_pods(ctx, models, jobs)
        except Exception as exc:  # keep checking; the API may be back next time
            metrics.ERRORS.labels("pods").inc()
            log.warning("checking compression pods: %s", exc)


def _in_phase(body: Mapping[str, Any], phase: api.Phase) -> bool:
    """A cheap look at the raw phase, for scans over every model: only the matches are read as API types."""
    return (body.get("status") or {}).get("phase") == phase.value


async def check_pods(ctx: Context, models: kopf.Index, jobs: kopf.Index) -> None:
    """Report pods of Compressing models that no node fits or that wait on an image pull
    or their configuration, and Jobs whose pods the API server refuses to create
    (the Job controller's ``FailedCreate`` Events: a missing ServiceAccount or PriorityClass).

    Without this such a pod would wait silently until the Job's activeDeadlineSeconds
    (hours) and only then show why. The phase stays Compressing: the cluster autoscaler
    can add a node, a pull can succeed on the next try and a missing Secret can be
    created, so the scheduler and kubelet keep trying and the deadline still bounds it;
    the Compressed and Ready conditions and one Warning Event say which pod and why
    meanwhile, and go back to JobRunning once it clears.
    """
    by_namespace: dict[str, list[tuple[Mapping[str, Any], api.CompressedModelStatus]]] = {}
    for _, store in list(models.items()):
        for body in store:
            if _in_phase(body, api.Phase.Compressing) and (status := read_status(body)).job_name:
                by_namespace.setdefault(_key(body)[0], []).append((body, status))
    for ns, compressing in by_namespace.items():
        events: list[dict[str, Any]] | None = None  # listed only when some started Job has no pod
        for start in range(0, len(compressing), POD_LIST_CHUNK):
            events = await _check_chunk(ctx, jobs, ns, compressing[start : start + POD_LIST_CHUNK], events)


async def _check_chunk(
    ctx: Context,
    jobs: kopf.Index,
    ns: str,
    bodies: list[tuple[Mapping[str, Any], api.CompressedModelStatus]],
    events: list[dict[str, Any]] | None,
) -> list[dict[str, Any]] | None:
    """:func:`check_pods` for some Compressing models of one namespace; returns the
    FailedCreate Events of the namespace once they had to be listed."""
    names = sorted({status.job_name or "" for _, status in bodies})
    pods: dict[str, list[dict[str, Any]]] = {}
    for pod in await ctx.kube().list("v1", "Pod", ns, f"{JOB_NAME_LABEL} in ({','.join(names)})"):
        pods.setdefault((pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL, ""), []).append(pod)
    for body, status in bodies:
        jname = status.job_name or ""
        job: JobState | None = _first(jobs, (ns, jname))
        if jname in pods or job is None or job.suspended:
            await _report_stuck(ctx, body, status, st.stuck_pod(pods.get(jname, [])))
            continue
        if events is None:
            events = await ctx.kube().list("v1", "Event", ns, field_selector=FAILED_CREATE_SELECTOR)
        await _report_stuck(ctx, body, status, st.pods_not_created(jname, job.uid, events))
    return events


async def _report_stuck(
    ctx: Context, body: Mapping[str, Any], status: api.CompressedModelStatus, stuck: tuple[str, str] | None
) -> None:
    change = phases.pods_stuck(status, stuck)
    if change is not None and await _write(ctx, body, status, change):
        await announce(ctx, body, change)


def _duration(job: Mapping[str, Any]) -> float:
    s = job.get("status") or {}
    try:
        start = datetime.datetime.fromisoformat(str(s["startTime"]).replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(str(s["completionTime"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return max(0.0, (end - start).total_seconds())


async def _release_queue(ctx: Context, jobs: kopf.Index, models: kopf.Index) -> None:
    """A slot freed: give it to the longest-queued models while slots are free (no event would wake them).

    Those taken out of line that still wait (their start lost a race) go back in their place.
    """
    cap = ctx.settings.max_concurrent_jobs
    if cap <= 0:
        return
    slots = _slots(ctx, jobs, models)
    taken: set[tuple[str, str]] = set()
    try:
        while not slots.full(cap) and (key := slots.take_oldest(taken)) is not None:
            body = _first(models, key)
            if body is not None:
                await reconcile(ctx, body, jobs, models)
    finally:
        slots.requeue(taken)
