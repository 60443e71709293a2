"""A small "cluster" for operator tests: the API-server stand-in plus a kubelet stand-in.

The emulator runs on loopback in its own thread and event loop, so the operator under
test (kopf, in another thread via ``KopfRunner``) talks real HTTP to it. The kubelet
stand-in watches Jobs inside the emulator: for each unsuspended Job it creates a Pod,
runs its init containers in order and then its main container, each as a local process
(``python -m modelpress.jobs --phase ...`` with the pod's volumes, e.g.
``/etc/modelpress/spec.yaml`` and the ``/tmp`` emptyDir, and each container's own
``/dev/termination-log`` mapped into a temporary directory) and then writes Pod and Job
status the way the kubelet and the Job controller do, including per-container
termination messages and the podFailurePolicy outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import kmock
import kopf
import yaml
from k8s_emulator import ApiError as EmulatorApiError
from k8s_emulator import ApiServer, now
from kopf.testing import KopfRunner
from tls import CertAuthority

from modelpress import api
from modelpress.crd import open_api_schema
from modelpress.summary import DEFAULT_TERMINATION_LOG as TERMINATION_LOG
from modelpress.summary import TERMINATION_MESSAGE_LIMIT as MESSAGE_LIMIT

logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


@dataclass
class ContainerResult:
    exit_code: int
    message: str = ""  # what the container left in its termination log
    reason: str = ""  # kubelet's reason: Completed, Error, OOMKilled...
    logs: str = ""
    # The pod's init containers that ran, in order, with their results (run_container
    # fills it). Empty from runners that stand in for the whole pod: their result is the
    # main container's and the init containers count as completed.
    init: list[tuple[str, ContainerResult]] = field(default_factory=list)


# A runner decides what "running the container" means: the real process, or an instant stand-in.
Runner = Callable[[Mapping[str, Any], Path], Awaitable[ContainerResult]]


async def run_container(
    job: Mapping[str, Any], root: Path, *, config_maps: Mapping[str, Mapping[str, str]], timeout: float | None
) -> ContainerResult:
    """Run the pod's containers as the kubelet does, each as a local process.

    Init containers run one at a time, in order, each to completion; the first that fails
    ends the pod (restartPolicy Never) and the main container never starts; otherwise the
    main container runs (https://kubernetes.io/docs/concepts/workloads/pods/init-containers/).
    Every container sees the pod's volumes at its own mount paths: a volume is one
    directory under ``root`` shared by every container that mounts it (an emptyDir), and
    each container has its own termination log. ``timeout`` is the whole pod's
    (activeDeadlineSeconds). The result is the main container's, or the failing init
    container's, with ``init`` listing the init containers that ran.
    """
    pod_spec = job["spec"]["template"]["spec"]
    deadline = None if timeout is None else time.monotonic() + timeout
    init: list[tuple[str, ContainerResult]] = []
    for container in pod_spec.get("initContainers", []):
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        result = await _run_one(pod_spec, container, root, config_maps, left)
        init.append((container["name"], result))
        if result.exit_code != 0:
            result.init = init
            return result
    left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    result = await _run_one(pod_spec, pod_spec["containers"][0], root, config_maps, left)
    result.init = init
    return result


async def _run_one(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    root: Path,
    config_maps: Mapping[str, Mapping[str, str]],
    timeout: float | None,
) -> ContainerResult:
    """One container's command as a local process with its mounts mapped under ``root``."""
    mapping: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = config_maps.get(volume["configMap"]["name"])
            if data is None:  # kubelet: CreateContainerConfigError until the ConfigMap exists
                return ContainerResult(1, "", "CreateContainerConfigError")
            for key, text in data.items():
                (local / key).write_text(text)
        mapping[mount["mountPath"]] = local
    term_log = root / f"termination-log-{container['name']}"
    term_log.write_text("")
    mapping[container.get("terminationMessagePath", TERMINATION_LOG)] = term_log

    def local_path(arg: str) -> str:
        for target, local in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
            if arg == target or arg.startswith(target.rstrip("/") + "/"):
                return str(local) + arg[len(target) :]
        return arg

    command = [
        sys.executable if c == "python" else local_path(c) for c in container["command"] + container.get("args", [])
    ]
    env = dict(os.environ)
    env.update({e["name"]: local_path(e.get("value", "")) for e in container.get("env", [])})
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(root)
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ContainerResult(137, "", "DeadlineExceeded")
    logs = out.decode(errors="replace")
    message = term_log.read_text()[:MESSAGE_LIMIT]
    if not message and container.get("terminationMessagePolicy") == "FallbackToLogsOnError" and proc.returncode:
        message = logs[-MESSAGE_LIMIT:]
    return ContainerResult(proc.returncode or 0, message, "Completed" if proc.returncode == 0 else "Error", logs)


class Kubelet:
    """Job controller + kubelet, just enough for compression Jobs."""

    def __init__(self, server: ApiServer, workdir: Path, runner: Runner | None = None):
        self.server, self.workdir = server, workdir
        self.runner = runner
        self.tasks: set[asyncio.Task[None]] = set()
        self.logs: dict[str, str] = {}
        self.started: set[str] = set()  # "namespace/name" of every Job given a pod
        self.create_retry_s = 0.2  # the real controller backs off exponentially, from 10 s
        server.listeners.append(self._on_event)

    def _on_event(self, plural: str, type_: str, obj: dict[str, Any]) -> None:
        if plural != "jobs" or type_ == "DELETED":
            return
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if spec.get("suspend") or status.get("startTime") or key in self.started:
            return
        self.started.add(key)
        task = asyncio.get_running_loop().create_task(self._run(copy.deepcopy(obj)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _config_maps(self, ns: str) -> dict[str, dict[str, str]]:
        return {o["metadata"]["name"]: o.get("data", {}) for o in self.server.objects("", "configmaps", ns)}

    async def _run(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        self._job_status(ns, name, {"startTime": now(), "active": 1})
        failures, limit = 0, job["spec"].get("backoffLimit", 6)
        deadline = job["spec"].get("activeDeadlineSeconds")
        while True:
            pod = await self._create_pod_retrying(job)
            if pod is None:
                return  # the Job went away while its pods could not be created
            root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
            if self.runner is not None:
                result = await self.runner(job, root)
            else:
                result = await run_container(job, root, config_maps=self._config_maps(ns), timeout=deadline)
            self.logs[pod["metadata"]["name"]] = result.logs
            self._pod_done(pod, result)
            if result.exit_code == 0:
                self._job_status(
                    ns,
                    name,
                    {
                        "active": 0,
                        "succeeded": 1,
                        "completionTime": now(),
                        "conditions": [
                            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now()},
                            {"type": "Complete", "status": "True", "lastTransitionTime": now()},
                        ],
                    },
                )
                return
            failures += 1
            reason = self._failure_reason(job, result, failures, limit)
            if reason:
                self._job_status(
                    ns,
                    name,
                    {
                        "active": 0,
                        "failed": failures,
                        "conditions": [
                            {"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": now()},
                            {
                                "type": "Failed",
                                "status": "True",
                                "reason": reason,
                                "lastTransitionTime": now(),
                                "message": f"Job failed: {reason}",
                            },
                        ],
                    },
                )
                return
            self._job_status(ns, name, {"failed": failures})

    @staticmethod
    def _failure_reason(job: Mapping[str, Any], result: ContainerResult, failures: int, limit: int) -> str | None:
        if result.reason == "DeadlineExceeded":
            return "DeadlineExceeded"
        for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules", []):
            codes = rule.get("onExitCodes")
            if (
                rule["action"] == "FailJob"
                and codes
                and (result.exit_code in codes["values"]) == (codes["operator"] == "In")
            ):
                return "PodFailurePolicy"
        return "BackoffLimitExceeded" if failures > limit else None

    async def _create_pod_retrying(self, job: Mapping[str, Any]) -> dict[str, Any] | None:
        """The Job controller's pod creation: a refused pod is a ``FailedCreate`` Warning Event on
        the Job and a retry later, never a pod (kube-controller-manager's job controller,
        https://kubernetes.io/docs/concepts/workloads/controllers/job/#handling-pod-and-container-failures).
        Repeats of the same message bump the Event's count, as the event recorder does."""
        meta = job["metadata"]
        event: dict[str, Any] | None = None
        while ("batch", "jobs", meta["namespace"], meta["name"]) in self.server.store:
            try:
                return self._create_pod(job)
            except EmulatorApiError as exc:
                message = f"Error creating: {exc.message}"
                if event is None or event["message"] != message:
                    event = self.server.create("", "events", meta["namespace"], _job_event(job, message))
                else:
                    event = self.server.patch(
                        "",
                        "events",
                        meta["namespace"],
                        event["metadata"]["name"],
                        "",
                        {"count": event.get("count", 1) + 1, "lastTimestamp": now()},
                        "application/merge-patch+json",
                    )
            await asyncio.sleep(self.create_retry_s)
        return None

    def _create_pod(self, job: Mapping[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        template = copy.deepcopy(job["spec"]["template"])
        labels = dict(template.get("metadata", {}).get("labels", {}))
        labels.update(
            {
                "job-name": meta["name"],
                "batch.kubernetes.io/job-name": meta["name"],
                "controller-uid": meta["uid"],
                "batch.kubernetes.io/controller-uid": meta["uid"],
            }
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{uuid.uuid4().hex[:5]}",
                "namespace": meta["namespace"],
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
        }
        created = self.server.create("", "pods", meta["namespace"], pod)
        return self.server.patch(
            "",
            "pods",
            meta["namespace"],
            created["metadata"]["name"],
            "status",
            {"status": {"phase": "Running", "startTime": now()}},
            "application/merge-patch+json",
        )

    def _pod_done(self, pod: Mapping[str, Any], result: ContainerResult) -> None:
        """Pod status as the kubelet leaves it: every init container terminated (or, after a
        failing one, still waiting), the main container terminated, or waiting in
        PodInitializing when an init container failed."""

        def terminated(r: ContainerResult) -> dict[str, Any]:
            state = {"exitCode": r.exit_code, "reason": r.reason, "finishedAt": now(), "startedAt": now()}
            if r.message:
                state["message"] = r.message
            return {"terminated": state}

        def entry(container: Mapping[str, Any], state: dict[str, Any]) -> dict[str, Any]:
            return {
                "name": container["name"],
                "ready": False,
                "restartCount": 0,
                "image": container["image"],
                "state": state,
            }

        ran = dict(result.init)
        stand_in = not result.init  # a runner standing in for the whole pod: init containers completed
        init_statuses = []
        for container in pod["spec"].get("initContainers", []):
            if container["name"] in ran:
                state = terminated(ran[container["name"]])
            elif stand_in:
                state = terminated(ContainerResult(0, "", "Completed"))
            else:
                state = {"waiting": {"reason": "PodInitializing"}}
            init_statuses.append(entry(container, state))
        init_failed = any(r.exit_code != 0 for r in ran.values())
        main = pod["spec"]["containers"][0]
        main_state = {"waiting": {"reason": "PodInitializing"}} if init_failed else terminated(result)
        status: dict[str, Any] = {
            "phase": "Succeeded" if result.exit_code == 0 else "Failed",
            "containerStatuses": [entry(main, main_state)],
        }
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        self.server.patch(
            "",
            "pods",
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            "status",
            {"status": status},
            "application/merge-patch+json",
        )

    def _job_status(self, ns: str, name: str, fields: dict[str, Any]) -> None:
        if ("batch", "jobs", ns, name) not in self.server.store:
            return  # deleted meanwhile
        self.server.patch("batch", "jobs", ns, name, "status", {"status": fields}, "application/merge-patch+json")


def _job_event(job: Mapping[str, Any], message: str) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": "Warning",
        "reason": "FailedCreate",
        "message": message,
        "source": {"component": "job-controller"},
        "count": 1,
        "firstTimestamp": now(),
        "lastTimestamp": now(),
    }


class KServe:
    """KServe's controller, just enough for rollouts: every InferenceService becomes
    Ready for its current generation (set ``ready = False`` to hold that back)."""

    def __init__(self, server: ApiServer):
        self.server = server
        self.ready = True
        server.listeners.append(self._on_event)

    def _on_event(self, plural: str, type_: str, obj: dict[str, Any]) -> None:
        if plural != "inferenceservices" or type_ == "DELETED" or not self.ready:
            return
        meta, status = obj["metadata"], obj.get("status") or {}
        if status.get("observedGeneration") == meta.get("generation"):
            return  # already reconciled (this also ends the loop our own status write starts)
        # After the API call that produced the event, as a controller would.
        asyncio.get_running_loop().call_soon(self.mark_ready, meta["namespace"], meta["name"])

    def mark_ready(self, ns: str, name: str) -> None:
        isvc = self.server.get("serving.kserve.io", "inferenceservices", ns, name)
        if isvc is None or not self.ready:
            return
        fields = {
            "observedGeneration": isvc["metadata"].get("generation"),
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        self.server.patch(
            "serving.kserve.io",
            "inferenceservices",
            ns,
            name,
            "status",
            {"status": fields},
            "application/merge-patch+json",
        )


def _tls_server(context: ssl.SSLContext) -> type[aiohttp.test_utils.RawTestServer]:
    """kmock's server class, listening with ``context`` (kmock itself starts plain HTTP)."""

    class TLSServer(aiohttp.test_utils.RawTestServer):
        async def start_server(self, **kwargs: Any) -> None:
            await super().start_server(ssl=context, **kwargs)

    return TLSServer


class Cluster:
    """The emulator, kubelet and KServe stand-ins in a background thread; sync helpers for tests.

    The API server is served over HTTPS with a CA made for this cluster, and the
    kubeconfig embeds it as ``certificate-authority-data`` the way kind, kubeadm, EKS and
    GKE write theirs. Users log in with a bearer token, or with ``client_cert`` by an
    embedded client certificate (then the server refuses connections without one).
    """

    def __init__(
        self,
        workdir: Path,
        runner: Runner | None = None,
        namespace: str = "ml",
        client_cert: bool = False,
        crd_validation: bool = False,
    ):
        self.workdir, self.runner, self.namespace = workdir, runner, namespace
        self.client_cert = client_cert
        # CompressedModels checked against the CRD's schema and CEL rules on write. Off by
        # default: most tests need invalid models to reach the operator, as they do past an
        # older CRD or `kubectl apply --validate=false`.
        self.crd_validation = crd_validation
        self.tls = CertAuthority.generate()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="api-server")
        self.server: ApiServer
        self.kubelet: Kubelet
        self.kserve: KServe
        self.url = ""
        self.kubeconfig = workdir / "kubeconfig"

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> Cluster:
        self.thread.start()
        self.call(self._start())
        if self.client_cert:
            user = {
                "client-certificate-data": self.tls.b64(self.tls.client_cert_pem),
                "client-key-data": self.tls.b64(self.tls.client_key_pem),
            }
        else:
            user = {"token": "test-token"}
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "test",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": self.url,
                                "certificate-authority-data": self.tls.b64(self.tls.ca_pem),
                            },
                        }
                    ],
                    "users": [{"name": "test", "user": user}],
                    "contexts": [
                        {"name": "test", "context": {"cluster": "test", "user": "test", "namespace": self.namespace}}
                    ],
                }
            )
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _start(self) -> None:
        self.server = ApiServer()
        for group, version, plural, kind in [
            (api.GROUP, api.VERSION, api.PLURAL, api.KIND),
            ("batch", "v1", "jobs", "Job"),
            ("", "v1", "pods", "Pod"),
            ("", "v1", "configmaps", "ConfigMap"),
            ("", "v1", "events", "Event"),
            ("", "v1", "serviceaccounts", "ServiceAccount"),
        ]:
            self.server.declare(group, version, plural, kind)
        self.server.declare("", "v1", "namespaces", "Namespace", namespaced=False)
        self.server.declare("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", namespaced=False)
        if self.crd_validation:
            self.server.crd_schemas[(api.GROUP, api.PLURAL)] = (api.KIND, api.VERSION, open_api_schema())
        self.server.create(
            "", "namespaces", None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        )
        # The ServiceAccount controller gives every namespace a "default" account.
        self.add_service_account("default")
        await self.server.__aenter__()
        self._http = kmock.Server(self.server, server_cls=_tls_server(self.tls.server_context(self.client_cert)))
        await self._http.__aenter__()
        self.url = str(self._http.url).rstrip("/")
        self.kubelet = Kubelet(self.server, self.workdir, self.runner)
        self.kserve = KServe(self.server)

    async def _stop(self) -> None:
        for task in list(self.kubelet.tasks):
            task.cancel()
        await asyncio.gather(*self.kubelet.tasks, return_exceptions=True)
        await self._http.__aexit__(None, None, None)
        await self.server.__aexit__(None, None, None)

    def add_service_account(self, name: str) -> None:
        self.server.create(
            "",
            "serviceaccounts",
            self.namespace,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        )

    def add_priority_class(self, name: str) -> None:
        self.server.create(
            "scheduling.k8s.io",
            "priorityclasses",
            None,
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": 1000},
        )

    def connection(self, **credentials: Any) -> kopf.ConnectionInfo:
        """How a client reaches this server: its URL and CA (``credentials``: token=..., or the client cert)."""
        if self.client_cert and not credentials:
            credentials = {"certificate_data": self.tls.client_cert_pem, "private_key_data": self.tls.client_key_pem}
        return kopf.ConnectionInfo(server=self.url, ca_data=self.tls.ca_pem, **credentials)

    def ssl_context(self) -> ssl.SSLContext:
        """For a test's own urllib calls to the server."""
        ctx = self.tls.client_context()
        if self.client_cert:
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp) / "c.crt", Path(tmp) / "c.key"
                cert.write_bytes(self.tls.client_cert_pem)
                key.write_bytes(self.tls.client_key_pem)
                ctx.load_cert_chain(cert, key)
        return ctx

    def call(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self.call(run())

    # -------------------------------------------------------------- objects

    def apply_model(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        return self.sync(
            self.server.create,
            api.GROUP,
            api.PLURAL,
            doc["metadata"].get("namespace", self.namespace),
            dict(doc),
            api.VERSION,
        )

    def patch_model(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self.sync(
            self.server.patch,
            api.GROUP,
            api.PLURAL,
            self.namespace,
            name,
            "",
            dict(patch),
            "application/merge-patch+json",
        )

    def delete_model(self, name: str) -> dict[str, Any]:
        return self.sync(self.server.delete, api.GROUP, api.PLURAL, self.namespace, name)

    def model(self, name: str) -> dict[str, Any] | None:
        return self.sync(self.server.get, api.GROUP, api.PLURAL, self.namespace, name)

    def objects(self, group: str, plural: str) -> list[dict[str, Any]]:
        return self.sync(self.server.objects, group, plural, self.namespace)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.objects("", "events") if name is None or e["involvedObject"]["name"] == name]

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def wait_phase(self, name: str, phases: str | set[str], timeout: float = 120) -> dict[str, Any]:
        wanted = {phases} if isinstance(phases, str) else phases

        def check() -> dict[str, Any] | None:
            obj = self.model(name)
            return obj if obj and (obj.get("status") or {}).get("phase") in wanted else None

        try:
            return self.wait_for(f"{name} in phase {wanted}", check, timeout)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; last status: {(self.model(name) or {}).get('status')}; "
                f"kubelet logs: {list(self.kubelet.logs.values())[-1:]}"
            ) from None


@contextlib.contextmanager
def operator_env(cluster: Cluster, **settings: str) -> Iterator[dict[str, str]]:
    """Environment for an operator run against ``cluster`` (kubeconfig + MODELPRESS_* settings)."""
    env = {"KUBECONFIG": str(cluster.kubeconfig), "MODELPRESS_METRICS_PORT": "0", "MODELPRESS_LIVENESS_PORT": "0"}
    env.update({f"MODELPRESS_{k.upper()}": v for k, v in settings.items()})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


HANDLERS = "modelpress.operator.handlers"


@contextlib.contextmanager
def running_operator(cluster: Cluster, **settings: str) -> Iterator[KopfRunner]:
    """kopf in a thread (KopfRunner), namespaced to the cluster's test namespace."""
    with operator_env(cluster, **settings):
        args = ["run", "--standalone", "--namespace", cluster.namespace, "-m", HANDLERS]
        with KopfRunner(args, timeout=60) as runner:
            yield runner
    if runner.exception is not None:
        raise runner.exception
    assert runner.exit_code == 0, runner.output


def sample_model(name: str = "digits", namespace: str = "ml", **spec: Any) -> dict[str, Any]:
    """A valid CompressedModel (s3:// URIs: for runners that do not read them)."""
    base: dict[str, Any] = {
        "source": {"storageUri": "s3://models/digits/model.onnx", "format": "onnx", "task": "classification"},
        "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
        "validation": {
            "dataset": {"storageUri": "s3://models/digits/val.npz", "format": "npz"},
            "metric": "accuracy",
            "maxAccuracyDrop": {"absolute": 0.02},
        },
        "job": {"gpu": 0},
        "output": {"storageUri": "s3://models/out/"},
    }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**base, **spec},
    }


def digits_model_doc(
    digits: Path, out: Path, name: str = "digits", source: str | None = None, **validation: Any
) -> dict[str, Any]:
    """The sample model on the real digits files (tests/helpers.write_digits) with file:// storage."""
    return sample_model(
        name,
        source={"storageUri": source or f"file://{digits}/model.onnx", "format": "onnx", "task": "classification"},
        validation={
            "dataset": {"storageUri": f"file://{digits}/val.npz", "format": "npz"},
            "metric": "accuracy",
            "maxAccuracyDrop": {"absolute": 0.05},
            "batchSize": 16,
            **validation,
        },
        job={"gpu": 0, "backoffLimit": 0},
        output={"storageUri": f"file://{out}/"},
    )


class Gate:
    """A runner that holds Jobs "running" until opened, then succeeds with a real-shaped summary."""

    def __init__(self, open_: bool = True, outcome: str = "Validated"):
        self.event = threading.Event()
        if open_:
            self.event.set()
        self.outcome = outcome
        self.runs: list[str] = []

    async def __call__(self, job: Mapping[str, Any], root: Path) -> ContainerResult:
        from modelpress.summary import JobSummary

        self.runs.append(job["metadata"]["name"])
        while not self.event.is_set():
            await asyncio.sleep(0.02)
        rh = job["metadata"]["labels"]["modelpress.io/recipe-hash"]
        summary = JobSummary(
            outcome=self.outcome,
            reason="trial 0 met every threshold",
            recipeHash=rh,
            artifact={"storageUri": f"s3://models/out/{rh}", "sha256": "0" * 64, "sizeBytes": 1000},
            results={"passed": True, "metric": "accuracy", "accuracyDrop": 0.004, "speedup": 2.5, "sizeRatio": 0.26},
        )
        return ContainerResult(summary.exit_code.value, summary.to_termination_message(), "Completed")
