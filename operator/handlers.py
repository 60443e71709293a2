"""kopf handlers: thin glue between watch events and the pure logic.

Level-based, in the manner of controller-runtime: every event of a CompressedModel
runs :func:`reconcile`, which compares the observed status with what the spec asks
for and does only the missing step. Low-level ``on.event`` handlers (not kopf's
create/update handlers) are used on purpose: they keep no progress annotations on
the object, so the operator's only writes are the ConfigMap, the Job, status and
Events — GitOps tools see no drift and a thousand models cost few API calls.

``kopf run -m modelpress.operator.handlers`` works too; settings then come from the
``MODELPRESS_*`` environment (see :mod:`modelpress.operator.settings`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import kopf

from modelpress import api
from modelpress.operator import job_builder, metrics
from modelpress.operator import settings as settings_mod
from modelpress.operator import status as st
from modelpress.operator.kube import ApiError, Conflict, Kube
from modelpress.operator.validation import SpecInvalid, format_problems, parse_model

log = logging.getLogger(__name__)
JOB_SELECTOR = {job_builder.LABEL_MODEL: kopf.PRESENT}
JOB_NAME_LABEL = "job-name"  # set on its pods by the Job controller
# Events field selectors: https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/
FAILED_CREATE_SELECTOR = f"involvedObject.kind=Job,reason={st.FAILED_CREATE_REASON}"
CONFLICT_ATTEMPTS = 3
# Phases in which a model's current Job exists and has not finished.
JOB_PHASES = frozenset({api.Phase.Queued.value, api.Phase.Compressing.value})


@dataclass
class State:
    """What one operator process remembers between events (rebuilt on restart)."""

    settings: settings_mod.Settings
    kube: Kube | None = None
    # Jobs created by this process, unfinished: whether each was created suspended (for Kueue).
    started: dict[tuple[str, str], bool] = field(default_factory=dict)
    collected: set[str] = field(default_factory=set)  # uids of Jobs whose outcome is in status
    cap_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    metrics_server: Any = None
    pod_check: asyncio.Task[None] | None = None
    configured: bool = False  # settings given by `modelpress operator` rather than the environment


STATE = State(settings=settings_mod.Settings())  # replaced at startup (environment) or by configure()


def configure(settings: settings_mod.Settings) -> None:
    """Used by ``modelpress operator`` before kopf starts."""
    STATE.settings = settings
    STATE.configured = True


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kube() -> Kube:
    if STATE.kube is None:
        raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
    return STATE.kube


# --------------------------------------------------------------------------- lifecycle


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credentials, shared with :mod:`kube` so there is one identity.

    The service account in a pod, else ``$KUBECONFIG``/~/.kube/config (read at call time,
    unlike the kubernetes client's default path, which is fixed at import).
    """
    conn = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if conn is not None:
        STATE.kube = Kube(conn)
    return conn


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, models: kopf.Index, compression_jobs: kopf.Index, **_: Any) -> None:
    chosen = STATE.settings if STATE.configured else settings_mod.from_env()
    fresh = State(settings=chosen, kube=STATE.kube, configured=STATE.configured)
    STATE.__dict__.update(fresh.__dict__)
    settings.posting.enabled = False  # our Events go through kube.py, one per outcome
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Server-side selector: only compression Jobs reach the operator, not every Job in the cluster.
    settings.watching.label_selectors["batch", "jobs"] = job_builder.LABEL_MODEL
    settings.peering.standalone = STATE.settings.standalone
    settings.peering.name = STATE.settings.peering_name
    metrics.reset()
    if STATE.settings.metrics_port:
        STATE.metrics_server = metrics.serve(STATE.settings.metrics_port)
    STATE.pod_check = asyncio.create_task(pod_check_loop(models, compression_jobs), name="modelpress-pod-check")


async def stop_loop(task: asyncio.Task | None) -> None:
    """Cancel a background loop and wait until it has ended (so no call outlives the client)."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await stop_loop(STATE.pod_check)
    STATE.pod_check = None
    if STATE.kube is not None:
        await STATE.kube.close()
    if STATE.metrics_server is not None:
        STATE.metrics_server.shutdown()
        STATE.metrics_server.server_close()
        STATE.metrics_server = None


# --------------------------------------------------------------------------- indexes


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
async def models(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Latest body of every model, so a Job event needs no extra GET.

    Async on purpose here and below: kopf runs sync handlers in a thread pool, which costs
    more than the work itself at a thousand models.
    """
    return {(namespace, name): {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}


class JobState(NamedTuple):
    """What the handlers need to know of one compression Job."""

    finished: str | None  # 'Complete', 'Failed' or None
    uid: str
    suspended: bool  # waiting for Kueue to admit it


@kopf.index("batch", "v1", "jobs", labels=JOB_SELECTOR)
async def compression_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], JobState]:
    """Every compression Job's :class:`JobState`."""
    return {(namespace, name): JobState(st.job_finished(body), str(body.metadata.uid), st.job_suspended(body))}


def _first(index: kopf.Index, key: Any) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


# --------------------------------------------------------------------------- models


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def model_event(event: Mapping[str, Any], compression_jobs: kopf.Index, models: kopf.Index, **_: Any) -> None:
    body = event["object"]
    meta = body["metadata"]
    if event.get("type") == "DELETED":
        metrics.forget_model(meta.get("namespace", ""), meta["name"])
        return
    metrics.RECONCILES.labels("model").inc()
    metrics.observe_model(meta.get("namespace", ""), meta["name"], body.get("status"))
    if meta.get("deletionTimestamp"):
        return  # owned objects go by garbage collection; nothing to hold it for
    try:
        for _ in range(CONFLICT_ATTEMPTS):
            if await reconcile(body, compression_jobs, models):
                return
            # Our status write met a newer version: decide again on the latest object.
            try:
                body = await kube().get(api.API_VERSION, api.KIND, meta.get("namespace") or "default", meta["name"])
            except ApiError as exc:
                if exc.status == 404:
                    return  # deleted meanwhile
                raise
    except Exception:
        metrics.ERRORS.labels("model").inc()
        raise


async def reconcile(body: Mapping[str, Any], jobs: kopf.Index, models: kopf.Index) -> bool:
    """Make the world match the spec: one Job per distinct recipe, status to match.

    Returns False when a conditional status write lost a race (409); the caller then
    reconciles the latest version instead.
    """
    meta, status = body["metadata"], body.get("status") or {}
    ns, name, gen = meta.get("namespace") or "default", meta["name"], meta.get("generation")
    try:
        model = parse_model(body)
    except SpecInvalid as exc:
        await _report_invalid(body, exc)
        return True

    rh = api.recipe_hash(model.spec)
    jname = job_builder.job_name(name, rh)
    queue = model.spec.job.queue_name
    spec_ok = [st.spec_valid()]
    retry_refused = st.refused_by_server(status) and status.get("observedGeneration") != gen
    if status.get("recipeHash") == rh and status.get("phase") in st.DONE_PHASES and not retry_refused:
        # Same recipe, result known: a serving-only (or no-op) change never recompresses.
        if status.get("observedGeneration") != gen:
            conds = spec_ok
            if status.get("phase") == api.Phase.Validated.value and not st.serving_enabled(body.get("spec") or {}):
                # Serving turned off before any rollout: Ready no longer waits for one
                # (a model that was serving is released by the rollout loop).
                conds = [*spec_ok, st.condition("Ready", True, "Validated", st.SERVING_DISABLED_MESSAGE)]
            await kube().patch_model_status(
                ns,
                name,
                {
                    "observedGeneration": gen,
                    "conditions": st.merge_conditions(status.get("conditions"), conds, gen, now()),
                },
            )
        return True
    if status.get("recipeHash") == rh and _job_in_progress(status, jname):
        existing: JobState | None = _first(jobs, (ns, jname))
        if existing is None and (ns, jname) not in STATE.started:
            await _ensure_job(model, body, jobs, models)  # resumed after a crash between status and Job
        elif _uncollected(jobs, (ns, jname)):
            # Finished but not collected (its Job event was lost to API errors): collect now.
            await collect(await kube().get("batch/v1", "Job", ns, jname), jobs, models, body)
        elif existing and not existing.finished and st.progress_phase(existing.suspended) != status.get("phase"):
            # Its Job event may have come before this status reached the index.
            return await _follow_job(body, jname, existing.suspended, queue)
        elif status.get("observedGeneration") != gen:
            # A spec edit that keeps the recipe (job, output or serving fields): every
            # condition this write stands for moves to the new generation with it.
            await kube().patch_model_status(
                ns,
                name,
                {
                    "observedGeneration": gen,
                    "conditions": st.merge_conditions(status.get("conditions"), spec_ok, gen, now()),
                },
            )
        return True

    async with STATE.cap_lock:
        job = job_builder.build_job(model, STATE.settings)
        if _over_cap(jobs, (ns, jname)):
            if status.get("phase") != api.Phase.Queued.value or status.get("recipeHash") != rh:
                return await _write(
                    ns,
                    name,
                    body,
                    {
                        "observedGeneration": gen,
                        "phase": api.Phase.Queued.value,
                        "recipeHash": rh,
                        "jobName": None,
                        "conditions": st.merge_conditions(
                            status.get("conditions"),
                            spec_ok
                            + [
                                st.condition(
                                    "Compressed",
                                    False,
                                    "Queued",
                                    f"waiting: {STATE.settings.max_concurrent_jobs} compression Jobs already run",
                                ),
                            ],
                            gen,
                            now(),
                        ),
                    },
                )
            return True
        STATE.started[(ns, jname)] = st.job_suspended(job)
    try:
        phase, progress = st.progress_status(jname, st.job_suspended(job), queue)
        written = await _write(
            ns,
            name,
            body,
            {
                "observedGeneration": gen,
                "phase": phase,
                "recipeHash": rh,
                "jobName": jname,
                "artifact": None,
                "results": None,
                "conditions": st.merge_conditions(
                    status.get("conditions"),
                    spec_ok
                    + progress
                    + [st.condition("Validated", False, "Pending", "waiting for the compression Job")],
                    gen,
                    now(),
                ),
            },
        )
        if not written:
            STATE.started.pop((ns, jname), None)
            return False
        await _ensure_job(model, body, jobs, models, job)
        return True
    except Exception:
        STATE.started.pop((ns, jname), None)
        raise


def _job_in_progress(status: Mapping[str, Any], jname: str) -> bool:
    """The status says Job ``jname`` exists and has not finished: Compressing, or Queued
    for Kueue (a model queued by the operator's own cap has no jobName yet)."""
    phase = status.get("phase")
    return phase == api.Phase.Compressing.value or (phase in JOB_PHASES and status.get("jobName") == jname)


def _uncollected(jobs: kopf.Index, key: tuple[str, str]) -> bool:
    job = _first(jobs, key)
    return job is not None and bool(job.finished) and job.uid not in STATE.collected


def _over_cap(jobs: kopf.Index, key: tuple[str, str]) -> bool:
    """``maxConcurrentJobs`` Jobs run already, so ``key`` must wait for a slot.

    A suspended Job does not count: Kueue holds it (no pod, no quota), and counting it
    would let Jobs waiting for Kueue keep the cap full, so nothing Kueue could admit
    would ever be created. A Job this process just created counts as it was created
    until its first event reaches the index.
    """
    cap = STATE.settings.max_concurrent_jobs
    if cap <= 0:
        return False
    running = {
        k for k, store in jobs.items() if not (job := next(iter(store), None)) or not (job.finished or job.suspended)
    }
    for k, created_suspended in STATE.started.items():
        job = _first(jobs, k)
        if not (job.suspended if job is not None else created_suspended):
            running.add(k)
    return key not in running and len(running) >= cap


async def _write(ns: str, name: str, body: Mapping[str, Any], fields: dict[str, Any]) -> bool:
    """Status write only onto the version we decided on; False when it moved meanwhile."""
    try:
        await kube().patch_model_status(ns, name, fields, resource_version=body["metadata"].get("resourceVersion"))
    except Conflict:
        log.debug("%s/%s changed while reconciling; the next event decides", ns, name)
        return False
    return True


async def _ensure_job(
    model: api.CompressedModel,
    body: Mapping[str, Any],
    jobs: kopf.Index,
    models: kopf.Index,
    job: Mapping[str, Any] | None = None,
) -> None:
    """ConfigMap + Job (``job``, else built now); an existing one (restart) is adopted and, if done, collected.

    When the API server refuses either as built, the model is Failed with the server's words.
    """
    job = job or job_builder.build_job(model, STATE.settings)
    try:
        await kube().create(job_builder.build_config_map(model, STATE.settings))
        job, created = await kube().create(job)
    except ApiError as exc:
        if not st.is_refusal(exc.status):
            raise
        meta = job["metadata"]
        STATE.started.pop((meta["namespace"], meta["name"]), None)
        await _report_refused(body, meta["labels"][job_builder.LABEL_HASH], exc)
        return
    if created:
        metrics.JOBS_CREATED.inc()
    elif st.job_finished(job):
        await collect(job, jobs, models, body)


async def _report_refused(body: Mapping[str, Any], recipe_hash: str, exc: ApiError) -> None:
    """The API server refused the ConfigMap or Job built from this spec: Failed, with its words.

    Without this the model would say Compressing for good (no Job exists to finish). The
    spec passed validation, so what the server refused is usually a ``spec.job`` field it
    checks more strictly (a rule ``modelpress validate`` does not know yet); editing the
    spec tries again even when the recipe is unchanged.
    """
    meta, status = body["metadata"], body.get("status") or {}
    gen = meta.get("generation")
    fields, conds, (etype, reason, message) = st.refused_status(exc.status, exc.message)
    fields.update(
        {
            "observedGeneration": gen,
            "recipeHash": recipe_hash,
            "conditions": st.merge_conditions(status.get("conditions"), [st.spec_valid(), *conds], gen, now()),
        }
    )
    ns, name = meta.get("namespace") or "default", meta["name"]
    await kube().patch_model_status(ns, name, fields)
    metrics.observe_model(ns, name, fields)
    await kube().post_event(body, etype, reason, message)


async def _report_invalid(body: Mapping[str, Any], exc: SpecInvalid) -> None:
    meta, status = body["metadata"], body.get("status") or {}
    gen = meta.get("generation")
    message = format_problems(exc.problems)
    cond = [st.condition("SpecValid", False, "InvalidSpec", message)]
    if status.get("observedGeneration") == gen and st.same_conditions(status.get("conditions"), cond):
        return
    await kube().patch_model_status(
        meta.get("namespace") or "default",
        meta["name"],
        {
            "observedGeneration": gen,
            "phase": api.Phase.Failed.value,
            "recipeHash": None,
            "jobName": None,
            "conditions": st.merge_conditions(
                status.get("conditions"),
                cond
                + [
                    st.condition("Ready", False, "InvalidSpec", "fix the spec; no Job was started"),
                ],
                gen,
                now(),
            ),
        },
    )
    await kube().post_event(body, "Warning", "InvalidSpec", message)


# --------------------------------------------------------------------------- jobs


@kopf.on.event("batch", "v1", "jobs", labels=JOB_SELECTOR)
async def job_event(event: Mapping[str, Any], compression_jobs: kopf.Index, models: kopf.Index, **_: Any) -> None:
    job = event["object"]
    if event.get("type") == "DELETED":
        return
    metrics.RECONCILES.labels("job").inc()
    try:
        if st.job_finished(job):
            await collect(job, compression_jobs, models)
        else:
            await _job_progress(job, compression_jobs, models)
    except Exception:
        metrics.ERRORS.labels("job").inc()
        raise


async def collect(
    job: Mapping[str, Any], jobs: kopf.Index, models: kopf.Index, model_body: Mapping[str, Any] | None = None
) -> None:
    """Read a finished Job's summary into its model's status, once."""
    meta = job["metadata"]
    ns, jname, uid = meta.get("namespace") or "default", meta["name"], meta.get("uid", meta["name"])
    labels = meta.get("labels") or {}
    model_name, jhash = labels.get(job_builder.LABEL_MODEL), labels.get(job_builder.LABEL_HASH)
    if uid in STATE.collected or not model_name:
        return
    body = model_body or _first(models, (ns, model_name))
    if body is None:
        return  # the model is gone; its Job goes by garbage collection
    try:
        current = api.recipe_hash(parse_model(body).spec)
    except SpecInvalid:
        return
    status = body.get("status") or {}
    STATE.collected.add(uid)  # claimed before any await: a concurrent event must not collect it twice
    STATE.started.pop((ns, jname), None)
    if current != jhash or (status.get("recipeHash") == jhash and status.get("phase") in st.DONE_PHASES):
        return  # an old recipe's Job, or already collected before a restart

    try:
        pods = await kube().list("v1", "Pod", ns, f"{JOB_NAME_LABEL}={jname}")
        fields, conds, (etype, reason, message) = st.outcome_status(body.get("spec") or {}, job, pods)
        gen = body["metadata"].get("generation")
        fields.update(
            {
                "observedGeneration": gen,
                "recipeHash": jhash,
                "jobName": jname,
                "conditions": st.merge_conditions(status.get("conditions"), [st.spec_valid(), *conds], gen, now()),
            }
        )
        await kube().patch_model_status(ns, model_name, fields)
    except Exception:
        STATE.collected.discard(uid)  # let the next event of the model or the Job try again
        raise
    metrics.JOB_DURATION.labels(fields["phase"]).observe(_duration(job))
    metrics.observe_model(ns, model_name, fields)
    await kube().post_event(body, etype, reason, message)
    await _release_queue(jobs, models)


async def _job_progress(job: Mapping[str, Any], jobs: kopf.Index, models: kopf.Index) -> None:
    """An unfinished Job was suspended or admitted (Kueue): its model shows Queued or Compressing.

    A running Job that Kueue suspends again (preemption) frees its slot under the cap.
    """
    meta = job["metadata"]
    labels = meta.get("labels") or {}
    body = _first(models, (meta.get("namespace") or "default", labels.get(job_builder.LABEL_MODEL)))
    status = (body or {}).get("status") or {}
    if body is None or not _job_in_progress(status, meta["name"]):
        return
    suspended = st.job_suspended(job)
    await _follow_job(body, meta["name"], suspended, labels.get(job_builder.KUEUE_QUEUE_LABEL))
    if suspended and status.get("phase") == api.Phase.Compressing.value:
        await _release_queue(jobs, models)


async def _follow_job(body: Mapping[str, Any], jname: str, suspended: bool, queue: str | None) -> bool:
    """Write the phase an unfinished Job stands for, if the status shows another one.

    False when the model changed meanwhile (its next event decides again).
    """
    meta, status = body["metadata"], body.get("status") or {}
    phase, conds = st.progress_status(jname, suspended, queue)
    if status.get("phase") == phase:
        return True
    fields = {
        "phase": phase,
        "conditions": st.merge_conditions(status.get("conditions"), conds, meta.get("generation"), now()),
    }
    return await _write(meta.get("namespace") or "default", meta["name"], body, fields)


# --------------------------------------------------------------------------- pods


async def pod_check_loop(models: kopf.Index, jobs: kopf.Index) -> None:
    """Every ``settings.pod_check_seconds``, :func:`check_pods`; an error is logged and retried next time.

    A loop over the index rather than a Pod watch: one list per namespace with running
    Jobs costs less than a watch over every compression pod's status changes.
    """
    while True:
        await asyncio.sleep(STATE.settings.pod_check_seconds)
        try:
            await check_pods(models, jobs)
        except Exception as exc:  # keep checking; the API may be back next time
            metrics.ERRORS.labels("pods").inc()
            log.warning("checking compression pods: %s", exc)


async def check_pods(models: kopf.Index, jobs: kopf.Index) -> None:
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
    by_namespace: dict[str, list[Mapping[str, Any]]] = {}
    for _, store in list(models.items()):
        for body in store:
            status = body.get("status") or {}
            if status.get("phase") == api.Phase.Compressing.value and status.get("jobName"):
                by_namespace.setdefault(body["metadata"].get("namespace") or "default", []).append(body)
    for ns, bodies in by_namespace.items():
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in await kube().list("v1", "Pod", ns, job_builder.LABEL_MODEL):
            pods.setdefault((pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL, ""), []).append(pod)
        events: list[dict[str, Any]] | None = None  # listed only when some started Job has no pod
        for body in bodies:
            jname = body["status"]["jobName"]
            job: JobState | None = _first(jobs, (ns, jname))
            if jname in pods or job is None or job.suspended:
                await _report_stuck(body, st.stuck_pod(pods.get(jname, [])))
                continue
            if events is None:
                events = await kube().list("v1", "Event", ns, field_selector=FAILED_CREATE_SELECTOR)
            await _report_stuck(body, st.pods_not_created(jname, job.uid, events))


async def _report_stuck(body: Mapping[str, Any], stuck: tuple[str, str] | None) -> None:
    meta, status = body["metadata"], body["status"]
    compressed = next((c for c in status.get("conditions") or [] if c.get("type") == "Compressed"), {})
    if stuck is not None:
        reason, message = stuck
        conds = [st.condition("Compressed", False, reason, message), st.condition("Ready", False, reason, message)]
    elif compressed.get("reason") in st.STUCK_POD_REASONS:
        conds = st.progress_status(status["jobName"], False)[1]  # it cleared
    else:
        return
    if st.same_conditions(status.get("conditions"), conds):
        return
    fields = {"conditions": st.merge_conditions(status.get("conditions"), conds, meta.get("generation"), now())}
    if await _write(meta.get("namespace") or "default", meta["name"], body, fields) and stuck is not None:
        await kube().post_event(body, "Warning", *stuck)


def _duration(job: Mapping[str, Any]) -> float:
    s = job.get("status") or {}
    try:
        start = datetime.datetime.fromisoformat(str(s["startTime"]).replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(str(s["completionTime"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return max(0.0, (end - start).total_seconds())


async def _release_queue(jobs: kopf.Index, models: kopf.Index) -> None:
    """A slot freed: give it to the longest-queued model (no event would wake it)."""
    if STATE.settings.max_concurrent_jobs <= 0:
        return
    queued = [
        b
        for _, store in models.items()
        for b in store
        if (b.get("status") or {}).get("phase") == api.Phase.Queued.value
    ]
    queued.sort(key=lambda b: str(b["metadata"].get("creationTimestamp") or ""))
    for body in queued:
        if _over_cap(jobs, ("", "")):
            return
        await reconcile(body, jobs, models)
