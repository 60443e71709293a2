"""The chart's RBAC is exact: the real operator, configured by the rendered Deployment,
runs the happy path against the API-server stand-in; every request it makes is allowed
by the rendered (Cluster)Roles, and every granted verb is used.

The operator runs as the image runs it: the ``modelpress operator`` console script (the
Dockerfile's ENTRYPOINT) with exactly the env the chart's Deployment sets, as a separate
process, talking HTTP to the stand-in (``tests/operator``: kmock's emulator with
kube-apiserver semantics and an audit trail, plus a kubelet that runs the real
compression Job). The stand-in also serves what a real cluster has and the operator
might reach for: the CRD API and kopf's peering resources.

Along the way the same run proves the chart's probe and metrics wiring (the liveness
endpoint answers on the probed port, the metrics port serves ModelPress metrics) and the
GitOps contract: the operator never writes ``spec``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import k8s_emulator
import numpy as np
import pytest
from cluster import Cluster
from helpers import free_port, wait_http

from modelpress import api
from modelpress.operator import job_builder
from modelpress.operator import settings as settings_mod

NAMESPACE = "ml"
RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
# scenario -> (chart values, the model asks for serving). The default install runs the
# model all the way to a canary (InferenceService created, then patched) and then turns
# serving off (InferenceService deleted); the namespaced install has serving off
# (rbac.kserve=false) and kopf peering on.
SCENARIOS: dict[str, tuple[dict[str, Any], bool]] = {
    "default-install": ({}, True),
    "namespaced-with-peering": (
        {
            "rbac": {"kserve": False},
            "watchNamespaces": [NAMESPACE],
            "peering": {"enabled": True, "name": "modelpress"},
        },
        False,
    ),
}


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str  # "" for cluster-scoped or all-namespaces requests
    name: str


class NamingApiServer(k8s_emulator.ApiServer):
    """The stand-in, also noting each request's object name (RBAC's resourceNames)."""

    names: list[str | None]

    async def __call__(self, raw: Any) -> Any:
        parsed = k8s_emulator.parse_path(raw.path)
        if parsed is not None:
            # Recorded right before the emulator appends its audit entry (no await in
            # between), so names[i] belongs to audit[i].
            NamingApiServer.names.append(parsed[4])
        return await super().__call__(raw)


@pytest.fixture(scope="module")
def digits_linear(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real classifier on scikit-learn's bundled digits as model.onnx, plus val.npz.

    Softmax regression trained by scikit-learn and written as one ONNX Gemm: a real,
    accurate model that the compression job quantizes in seconds, without torch.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    out = tmp_path_factory.mktemp("digits-linear")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    clf = LogisticRegression(max_iter=300).fit(x[:1200], y[:1200])
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["logits"])],
        "digits_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(clf.coef_.T.astype(np.float32), "w"),
            numpy_helper.from_array(clf.intercept_.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    np.savez(out / "val.npz", x=x[1200:], y=y[1200:].astype(np.int64))
    return out


def model_doc(digits: Path, out: Path, serving: bool) -> dict[str, Any]:
    """The operator tests' happy-path model: dynamic int8, real data, file:// storage.

    With serving: a canary against the uncompressed source (``baseline: source``), so
    the operator first creates the InferenceService serving the source, then patches
    the compressed model in as a 50% canary; with no Prometheus configured the canary
    then holds (it never promotes blind).
    """
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "digits", "namespace": NAMESPACE},
        "spec": {
            "source": {"storageUri": f"file://{digits}/model.onnx", "format": "onnx", "task": "classification"},
            "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
            "validation": {
                "dataset": {"storageUri": f"file://{digits}/val.npz", "format": "npz"},
                "metric": "accuracy",
                "maxAccuracyDrop": {"absolute": 0.05},
                "batchSize": 16,
            },
            "job": {"gpu": 0, "backoffLimit": 0},
            "output": {"storageUri": f"file://{out}/"},
        },
    }
    if serving:
        doc["spec"]["serving"] = {"rollout": {"baseline": "source", "steps": [50], "interval": "1m"}}
    return doc


# --------------------------------------------------------------------------- RBAC model


@dataclass(frozen=True)
class Grant:
    """One (verb, group, resource[/sub]) a rule grants, where, and for which names."""

    verb: str
    group: str
    resource: str
    namespace: str | None  # None: cluster-wide (ClusterRole via ClusterRoleBinding)
    names: frozenset[str]  # empty: any name

    def allows(self, r: Request) -> bool:
        resource = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
        return (
            (self.verb, self.group, self.resource) == (r.verb, r.group, resource)
            and (self.namespace is None or self.namespace == r.namespace)
            and (not self.names or r.name in self.names)
        )


def grants_for(objects: list[dict[str, Any]], sa_name: str, sa_namespace: str) -> list[Grant]:
    """Everything the operator's ServiceAccount may do, following the bindings like the API server."""
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objects
        if o["kind"] in RBAC_KINDS[:2]
    }
    out = []
    for binding in (o for o in objects if o["kind"] in RBAC_KINDS[2:]):
        subject = {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}
        if subject not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.append(Grant(verb, group, resource, ns, frozenset(rule.get("resourceNames", []))))
    return out


def test_grant_model_follows_bindings_and_names() -> None:
    """Guard for the checker itself: scope, subresource and resourceNames all matter."""
    role = {
        "kind": "Role",
        "metadata": {"name": "r", "namespace": "a"},
        "rules": [
            {"apiGroups": ["x"], "resources": ["things/status"], "verbs": ["patch"]},
            {"apiGroups": ["x"], "resources": ["peers"], "resourceNames": ["p"], "verbs": ["patch"]},
        ],
    }
    binding = {
        "kind": "RoleBinding",
        "metadata": {"name": "r", "namespace": "a"},
        "roleRef": {"kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "sys"}],
    }
    grants = grants_for([role, binding], "sa", "sys")
    allowed = lambda *r: any(g.allows(Request(*r)) for g in grants)  # noqa: E731
    assert allowed("patch", "x", "things", "status", "a", "t")
    assert not allowed("patch", "x", "things", "", "a", "t")  # the object itself, not status
    assert not allowed("patch", "x", "things", "status", "b", "t")  # another namespace
    assert allowed("patch", "x", "peers", "", "a", "p") and not allowed("patch", "x", "peers", "", "a", "q")
    assert grants_for([role, binding], "other", "sys") == []


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    requests: list[Request]
    grants: list[Grant]
    applied: dict[str, Any]
    final: dict[str, Any]
    peerings: list[dict[str, Any]]
    healthz: int
    metrics: str
    operator_log: str
    faults: list[Any]


def deployment_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.fixture(scope="module")
def operator_runs(
    digits_linear: Path, tmp_path_factory: pytest.TempPathFactory, crds: list[dict[str, Any]], render
) -> Iterator[dict[str, Run]]:
    runs: dict[str, Run] = {}
    saved = os.environ.get("MODELPRESS_LATENCY_BUDGET_S")
    os.environ["MODELPRESS_LATENCY_BUDGET_S"] = "0.05"  # the job process: behaviour, not speed
    try:
        for scenario, (values, serving) in SCENARIOS.items():
            work = tmp_path_factory.mktemp(scenario)
            runs[scenario] = run_scenario(values, serving, digits_linear, work, crds, render)
    finally:
        if saved is None:
            os.environ.pop("MODELPRESS_LATENCY_BUDGET_S", None)
        else:
            os.environ["MODELPRESS_LATENCY_BUDGET_S"] = saved
    yield runs


def run_scenario(values, serving, digits, work, crds, render) -> Run:  # noqa: ANN001
    liveness, metrics = free_port(), free_port()
    values = dict(values, operator={"livenessPort": liveness, "metricsPort": metrics, "defaultGpu": 0})
    objects = render(values)
    env = deployment_env(objects)
    (sa,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    grants = grants_for(objects, sa["metadata"]["name"], sa["metadata"]["namespace"])
    assert grants, "the chart binds nothing to the operator's ServiceAccount"

    NamingApiServer.names = []
    import cluster as cluster_module

    cluster_module.ApiServer = NamingApiServer  # type: ignore[misc]
    try:
        with Cluster(work, namespace=NAMESPACE) as cluster:
            server = cluster.server
            # What a real cluster with this chart installed serves and holds.
            cluster.sync(
                server.declare,
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                False,
            )
            cluster.sync(server.declare, "kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", False)
            cluster.sync(server.declare, "kopf.dev", "v1", "kopfpeerings", "KopfPeering", True)
            cluster.sync(server.declare, ISVC[0], ISVC[1], ISVC[2], ISVC[3], True)
            for crd in crds:
                cluster.sync(server.create, "apiextensions.k8s.io", "customresourcedefinitions", None, crd)
            for peering in (o for o in objects if o["kind"] in ("ClusterKopfPeering", "KopfPeering")):
                plural = peering["kind"].lower() + "s"
                cluster.sync(server.create, "kopf.dev", plural, peering["metadata"].get("namespace"), peering)
            # The model was applied while the operator was down, and its previous
            # instance died right after creating the ConfigMap and Job (so creates meet
            # 409 AlreadyExists and adopt); its first status write races another writer
            # (409 Conflict, so it re-reads the model). These are the operator's
            # restart-safety paths: the calls they make must be allowed too.
            applied = cluster.apply_model(model_doc(digits, work / "artifacts", serving))
            settings = settings_mod.from_env({k: v for k, v in env.items() if k.startswith("MODELPRESS_")})
            for obj in job_builder.build_compression(api.CompressedModel.model_validate(applied), settings):
                group = obj["apiVersion"].rpartition("/")[0]
                cluster.sync(
                    server.create,
                    group,
                    obj["kind"].lower() + "s",
                    NAMESPACE,
                    obj,
                    obj["apiVersion"].rpartition("/")[2],
                )
            server.faults.append(k8s_emulator.Fault("patch", api.PLURAL, 409, subresource="status"))
            server.audit.clear()
            NamingApiServer.names.clear()

            log_path = work / "operator.log"
            command = [str(Path(sys.executable).with_name("modelpress")), "operator"]  # the image's ENTRYPOINT
            proc_env = dict(os.environ, **env, KUBECONFIG=str(cluster.kubeconfig))
            proc_env["MODELPRESS_ROLLOUT_TICK_SECONDS"] = "1"  # a test setting: rollout ticks every second
            proc_env["MODELPRESS_POD_CHECK_SECONDS"] = "0.5"
            # A second model whose pods can never be created: the stuck-pod check reads the
            # Job controller's FailedCreate Events for it.
            no_pods = model_doc(digits, work / "artifacts", serving=False)
            no_pods["metadata"]["name"] = "no-pods"
            no_pods["spec"]["job"]["serviceAccountName"] = "missing"
            cluster.apply_model(no_pods)
            with log_path.open("w") as log:
                proc = subprocess.Popen(command, env=proc_env, stdout=log, stderr=subprocess.STDOUT)
            try:
                healthz, _ = wait_http(f"http://127.0.0.1:{liveness}/healthz", proc=proc, log=log_path)
                final = cluster.wait_phase("digits", "RollingOut" if serving else "Validated", 180)
                if serving:
                    cluster.wait_for("the canary in the InferenceService", lambda: canary_in_isvc(cluster), 60)
                    final = cluster.model("digits")
                    # Then serving is turned off: the InferenceService it created is deleted.
                    cluster.patch_model("digits", {"spec": {"serving": {"enabled": False}}})
                    cluster.wait_for("the InferenceService deleted", lambda: not cluster.objects(ISVC[0], ISVC[2]), 60)
                cluster.wait_for(
                    "no-pods reported",
                    lambda: any(
                        c.get("reason") == "FailedCreate"
                        for c in ((cluster.model("no-pods") or {}).get("status") or {}).get("conditions", [])
                    ),
                    60,
                )
                _, metrics_text = wait_http(f"http://127.0.0.1:{metrics}/metrics", proc=proc, log=log_path)
                if values.get("peering", {}).get("enabled"):
                    cluster.wait_for("the operator in the peering", lambda: peering_status(cluster))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            requests = [
                Request(a.verb, a.group, a.resource, a.subresource, a.namespace, name or "")
                for a, name in zip(server.audit, NamingApiServer.names, strict=True)
            ]
            peerings = [
                o
                for plural in ("clusterkopfpeerings", "kopfpeerings")
                for o in cluster.sync(server.objects, "kopf.dev", plural, None)
            ]
            faults = list(server.faults)
    finally:
        cluster_module.ApiServer = k8s_emulator.ApiServer  # type: ignore[misc]
    return Run(requests, grants, applied, final, peerings, healthz, metrics_text, log_path.read_text(), faults)


def canary_in_isvc(cluster: Cluster) -> bool:
    isvcs = cluster.objects(ISVC[0], ISVC[2])
    return any((i.get("spec") or {}).get("canary") for i in isvcs)


def peering_status(cluster: Cluster) -> bool:
    objs = [
        o
        for p in ("clusterkopfpeerings", "kopfpeerings")
        for o in cluster.sync(cluster.server.objects, "kopf.dev", p, None)
    ]
    return any(o.get("status") for o in objs)


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_request_is_allowed(scenario: str, operator_runs: dict[str, Run]) -> None:
    run = operator_runs[scenario]
    assert run.requests
    denied = sorted({r for r in run.requests if not any(g.allows(r) for g in run.grants)}, key=str)
    assert not denied, f"the operator makes requests the chart does not allow: {denied}\n{run.operator_log[-3000:]}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_granted_verb_is_used(scenario: str, operator_runs: dict[str, Run]) -> None:
    run = operator_runs[scenario]
    unused = sorted({g for g in run.grants if not any(g.allows(r) for r in run.requests)}, key=str)
    assert not unused, f"the chart grants what the operator never uses: {unused}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_happy_path_really_ran(scenario: str, operator_runs: dict[str, Run]) -> None:
    run = operator_runs[scenario]
    status = run.final["status"]
    assert status["results"]["passed"] is True
    _values, serving = SCENARIOS[scenario]
    if serving:
        assert status["phase"] == "RollingOut" and status["rollout"]["canaryPercent"] == 50
        assert {("create", "inferenceservices"), ("patch", "inferenceservices"), ("delete", "inferenceservices")} <= {
            (r.verb, r.resource) for r in run.requests
        }
    else:
        assert status["phase"] == "Validated"
    assert {("create", "batch", "jobs"), ("patch", "modelpress.io", "compressedmodels")} <= {
        (r.verb, r.group, r.resource) for r in run.requests
    }
    assert run.healthz == 200, "the chart's liveness/readiness probe port does not answer"
    assert "modelpress_jobs_created_total" in run.metrics
    assert all(f.hits == 1 for f in run.faults), "the injected status conflict never happened"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_operator_never_writes_spec(scenario: str, operator_runs: dict[str, Run]) -> None:
    """GitOps: what Argo CD applied stays byte-identical; only status changes."""
    run = operator_runs[scenario]
    assert json.dumps(run.final["spec"], sort_keys=True) == json.dumps(run.applied["spec"], sort_keys=True)
    assert run.final["metadata"]["generation"] == run.applied["metadata"]["generation"] == 1
    writes = [r for r in run.requests if r.resource == api.PLURAL and r.verb not in ("get", "list", "watch")]
    assert writes and all((r.verb, r.subresource) == ("patch", "status") for r in writes), writes
    volatile = {"resourceVersion", "managedFields"}
    before = {k: v for k, v in run.applied["metadata"].items() if k not in volatile}
    after = {k: v for k, v in run.final["metadata"].items() if k not in volatile}
    assert after == before, "the operator changed the model's metadata (finalizers, labels, annotations?)"


def test_peering_touches_only_the_charts_peering_object(operator_runs: dict[str, Run]) -> None:
    run = operator_runs["namespaced-with-peering"]
    patched = {(r.resource, r.namespace, r.name) for r in run.requests if r.group == "kopf.dev" and r.verb == "patch"}
    assert patched == {("kopfpeerings", NAMESPACE, "modelpress")}
    assert [p["metadata"]["name"] for p in run.peerings] == ["modelpress"]
    assert not [r for r in operator_runs["default-install"].requests if r.group == "kopf.dev"]


def test_namespaced_install_makes_no_cluster_wide_reads_beyond_scanning(operator_runs: dict[str, Run]) -> None:
    run = operator_runs["namespaced-with-peering"]
    cluster_scoped = {(r.group, r.resource) for r in run.requests if not r.namespace}
    assert cluster_scoped <= {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}


def test_operator_tests_scenario_is_allowed_by_the_namespaced_chart(tmp_path: Path, render) -> None:
    """The operator tests' own RBAC scenario (validated, invalid spec, failed Job, delete;
    tests/operator/rbac.py) needs nothing the namespaced chart does not grant."""
    from rbac import NAMESPACE as OPERATOR_TESTS_NAMESPACE
    from rbac import observed_rbac

    objects = render({"watchNamespaces": [OPERATOR_TESTS_NAMESPACE], "rbac": {"kserve": False}})
    (sa,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    grants = grants_for(objects, sa["metadata"]["name"], sa["metadata"]["namespace"])
    used = [Request(*usage, name="") for usage in observed_rbac(tmp_path)]
    assert len(used) >= 8
    denied = [r for r in used if not any(g.allows(r) for g in grants)]
    assert not denied, denied
