"""The Helm chart, rendered and linted by the real Helm engine, every object validated.

Built-in kinds go through kubernetes-validate (strict: unknown fields are errors);
custom resources through the OpenAPI schema of the CRD that defines them (KServe's
published CRDs in ../shared/schemas/kserve, kopf's peering CRDs shipped in crds/).
"""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from modelpress.operator import settings as settings_mod

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "modelpress"
KSERVE_SCHEMAS = REPO.parent / "shared" / "schemas" / "kserve"
KUBE_VERSION = "1.33.0"

NON_DEFAULT = {
    "watchNamespaces": ["team-a", "team-b"],
    "replicaCount": 2,
    "peering": {"enabled": True, "name": "mp-peers"},
    "image": {"repository": "registry.example/mp/operator", "digest": "sha256:" + "a" * 64},
    "jobImage": {"repository": "registry.example/mp/jobs", "tag": "0.2.0-cuda"},
    "imagePullSecrets": [{"name": "regcred"}],
    "operator": {
        "defaultGpu": 0,
        "maxConcurrentJobs": 4,
        "jobTtlSeconds": 600,
        "jobBackoffLimit": 0,
        "jobActiveDeadlineSeconds": 900,
        "jobRunAsUser": 4242,
        "prometheusUrl": "http://prometheus.monitoring:9090",
        "metricsPort": 9100,
        "livenessPort": 9101,
        "extraLabels": {"team": "search", "example.com/cost-centre": "ml-42"},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
    },
    "serviceAccount": {"create": True, "name": "mp-operator", "annotations": {"team": "ml-platform"}},
    "rbac": {"create": True, "kserve": False},
    "metrics": {
        "service": {"enabled": True, "port": 9100},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
    },
    "servingRuntime": {"enabled": False},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "priorityClassName": "system-cluster-critical",
}
SCENARIOS = {"default": {}, "non-default": NON_DEFAULT}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = by_kind(objects, kind)
    return obj


def hook(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get("helm.sh/hook")


def installed(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `helm install` leaves running: the rendered objects less the hooks (`helm test`'s)."""
    return [o for o in objects if hook(o) is None]


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


def custom_resource_schemas(crds: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> OpenAPI schema, for every custom resource the chart may render."""
    out = {}
    kserve_crd = yaml.safe_load((KSERVE_SCHEMAS / "full_serving.kserve.io_clusterservingruntimes.yaml").read_text())
    out[("serving.kserve.io/v1alpha1", "ClusterServingRuntime")] = crd_schema(kserve_crd, "v1alpha1")
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def validate_object(obj: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in schemas:
        jsonschema.validate(obj, schemas[key])
    elif key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
        # The Prometheus Operator's CRD is not available offline; its meaning is checked
        # against the Service it scrapes in test_service_monitor_scrapes_the_metrics_service.
        assert set(obj["spec"]) <= {"selector", "namespaceSelector", "endpoints"}
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART_DIR, SCENARIOS[scenario], strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_validates(scenario: str, render, crds) -> None:
    schemas = custom_resource_schemas(crds)
    objects = render(SCENARIOS[scenario])
    assert objects
    for obj in objects:
        validate_object(obj, schemas)


def test_validation_catches_a_broken_object(render, crds) -> None:
    """Guard: the validators really reject what the API server would."""
    schemas = custom_resource_schemas(crds)
    objects = render({})
    deployment = one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment, schemas)
    runtime = one(objects, "ClusterServingRuntime")
    runtime["spec"]["supportedModelFormats"][0]["priority"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_object(runtime, schemas)


def test_crds_are_the_generated_ones_and_validate(crds) -> None:
    source = REPO / "crds" / "compressedmodels.modelpress.io.yaml"
    assert (CHART_DIR / "crds" / source.name).read_bytes() == source.read_bytes(), (
        "charts/modelpress/crds/ is stale: cp crds/compressedmodels.modelpress.io.yaml charts/modelpress/crds/"
    )
    names = {c["metadata"]["name"] for c in crds}
    assert names == {"compressedmodels.modelpress.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
    for crd in crds:
        kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)


def deployment_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def test_default_values_match_the_operator_defaults(render) -> None:
    env = {k: v for k, v in deployment_env(render({})).items() if k.startswith("MODELPRESS_")}
    rendered = settings_mod.from_env(env)
    defaults = settings_mod.Settings()
    assert rendered.job_image == settings_mod.DEFAULT_JOB_IMAGE
    assert rendered.cluster_wide and rendered.standalone
    for field in ("default_gpu", "max_concurrent_jobs", "job_ttl_seconds", "job_backoff_limit",
                  "job_active_deadline_seconds", "metrics_port", "liveness_port", "peering_name",
                  "extra_labels"):  # fmt: skip
        assert getattr(rendered, field) == getattr(defaults, field), field
    # The job image runs as uid 10001 (Dockerfile); the chart makes Jobs match it.
    assert rendered.job_run_as_user == 10001


def test_values_reach_the_operator_settings(render) -> None:
    env = deployment_env(render(NON_DEFAULT))
    assert env["TZ"] == "UTC"
    rendered = settings_mod.from_env({k: v for k, v in env.items() if k.startswith("MODELPRESS_")})
    op = NON_DEFAULT["operator"]
    assert rendered.namespaces == ("team-a", "team-b") and not rendered.cluster_wide
    assert rendered.job_image == "registry.example/mp/jobs:0.2.0-cuda"
    assert (rendered.default_gpu, rendered.max_concurrent_jobs) == (op["defaultGpu"], op["maxConcurrentJobs"])
    assert (rendered.job_ttl_seconds, rendered.job_backoff_limit) == (op["jobTtlSeconds"], op["jobBackoffLimit"])
    assert rendered.job_active_deadline_seconds == op["jobActiveDeadlineSeconds"]
    assert rendered.job_run_as_user == op["jobRunAsUser"]
    assert rendered.prometheus_url == op["prometheusUrl"]
    assert (rendered.metrics_port, rendered.liveness_port) == (op["metricsPort"], op["livenessPort"])
    assert rendered.standalone is False and rendered.peering_name == "mp-peers"
    assert rendered.extra_labels == op["extraLabels"]


def test_every_operator_setting_is_reachable_from_values(render) -> None:
    """A new Settings field must get a chart value, except test-speed intervals.

    pod_check_seconds is such an interval (like MODELPRESS_ROLLOUT_TICK_SECONDS, which is
    not even a setting): tests shorten it, a cluster has no reason to.
    """
    names = set()
    for values in SCENARIOS.values():
        names |= {k for k in deployment_env(render(values)) if k.startswith("MODELPRESS_")}
    wanted = {"MODELPRESS_" + f.upper() for f in settings_mod.Settings.__dataclass_fields__} - {
        "MODELPRESS_POD_CHECK_SECONDS"
    }
    assert wanted <= names, f"settings with no chart value: {sorted(wanted - names)}"


def test_every_env_var_names_a_real_setting(render) -> None:
    fields = {"MODELPRESS_" + f.upper() for f in settings_mod.Settings.__dataclass_fields__}
    for values in SCENARIOS.values():
        names = {k for k in deployment_env(render(values)) if k.startswith("MODELPRESS_")}
        assert names <= fields, names - fields


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_pod_meets_restricted_pod_security(scenario: str, render) -> None:
    pod = one(render(SCENARIOS[scenario]), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_hit_the_operator_liveness_endpoint(scenario: str, render) -> None:
    objects = render(SCENARIOS[scenario])
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness_port = int(deployment_env(objects)["MODELPRESS_LIVENESS_PORT"])
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"  # operator/main.py: kopf liveness endpoint
        assert ports[get["port"]] == liveness_port


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_metrics_service_selects_the_operator_pod_port(scenario: str, render) -> None:
    objects = render(SCENARIOS[scenario])
    pod = one(objects, "Deployment")["spec"]["template"]
    service = one(installed(objects), "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert container_ports[port["targetPort"]] == int(deployment_env(objects)["MODELPRESS_METRICS_PORT"])


def test_service_monitor_scrapes_the_metrics_service(render) -> None:
    objects = render(NON_DEFAULT)
    monitor, service = one(objects, "ServiceMonitor"), one(installed(objects), "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    assert not by_kind(render({}), "ServiceMonitor")


def test_images_and_pull_secrets(render) -> None:
    objects = render(NON_DEFAULT)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/mp/operator@sha256:" + "a" * 64
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "mp-operator"
    assert one(objects, "ServiceAccount")["metadata"]["name"] == "mp-operator"


def test_standalone_never_runs_two_operators(render) -> None:
    assert one(render({}), "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in one(render(NON_DEFAULT), "Deployment")["spec"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "replicaCount"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"operator": {"metricsPort": 70000}}, "metricsPort"),
        ({"operator": {"extraLabels": {"team": "search ml"}}}, "extraLabels"),
        ({"operator": {"extraLabels": {"-team": "search"}}}, "propertyName '-team'"),
        ({"operator": {"extraLabels": {"job-name": "x"}}}, "propertyName 'job-name'"),
        (
            {"operator": {"extraLabels": {"batch.kubernetes.io/job-name": "x"}}},
            "propertyName 'batch.kubernetes.io/job-name'",
        ),
        ({"jobimage": {"repository": "x"}}, "jobimage"),
        ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}, "metrics.service.enabled"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name"),
    ],
)
def test_bad_values_fail_with_the_field_named(values: dict[str, Any], message: str, render) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_serving_runtime_starts_the_real_runtime_with_valid_flags(render) -> None:
    """The ClusterServingRuntime's command line parses with the runtime's own parser."""
    from modelpress.jobs import serving

    runtime = one(render({}), "ClusterServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["command"] == ["python", "-m", "modelpress.jobs.serving"]
    # The slim serving image (Dockerfile target `serving`), not the job image with torch.
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    assert container["image"] == f"ghcr.io/modelpress/modelpress-serving:{app_version}"
    digest = "sha256:" + "a" * 64
    pinned = one(render({"servingImage": {"repository": "r.example/serve", "digest": digest}}), "ClusterServingRuntime")
    assert pinned["spec"]["containers"][0]["image"] == f"r.example/serve@{digest}"
    args = [a.replace("{{.Name}}", "digits") for a in container["args"]]
    parsed = serving.build_parser().parse_args(args)
    assert (str(parsed.model_dir), parsed.model_name) == ("/mnt/models", "digits")
    assert str(parsed.http_port) == runtime["spec"]["annotations"]["prometheus.kserve.io/port"]
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == ["onnx"]
    assert not by_kind(render({"servingRuntime": {"enabled": False}}), "ClusterServingRuntime")


def rules_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objects if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rbac_has_no_wildcards_and_no_secrets(scenario: str, render) -> None:
    for rule in rules_of(render(SCENARIOS[scenario])):
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), rule
        assert "secrets" not in rule["resources"]
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        # The one delete: InferenceServices the operator created, when serving is turned off.
        if "delete" in rule["verbs"]:
            assert (rule["apiGroups"], rule["resources"]) == (["serving.kserve.io"], ["inferenceservices"]), rule


def test_cluster_wide_install_binds_one_cluster_role(render) -> None:
    objects = render({})
    role, binding = one(objects, "ClusterRole"), one(objects, "ClusterRoleBinding")
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}  # fmt: skip
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelpress", "namespace": "modelpress-system"}]


def test_namespaced_install_grants_nothing_cluster_wide(render) -> None:
    objects = render(dict(NON_DEFAULT, rbac={"create": True, "kserve": False, "kopfScanning": False}))
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    roles, bindings = by_kind(objects, "Role"), by_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "mp-operator", "namespace": "modelpress-system"}]
    # rbac.kserve=false: no InferenceService access at all.
    assert not [r for r in rules_of(objects) if "serving.kserve.io" in r["apiGroups"]]
    peerings = by_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]


def test_kopf_scanning_is_the_only_cluster_wide_grant_of_a_namespaced_install(render) -> None:
    scanning = {"create": True, "kserve": False, "kopfScanning": True}
    objects = render(dict(NON_DEFAULT, rbac=scanning))
    (role,) = by_kind(objects, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    (binding,) = by_kind(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # Cluster-wide installs see every namespace anyway: only the CRD watch is added.
    (cluster_role,) = by_kind(render({"rbac": scanning}), "ClusterRole")
    assert role["rules"][0] in cluster_role["rules"]
    assert not [r for r in cluster_role["rules"] if "namespaces" in r["resources"]]


def test_peering_patch_is_limited_to_our_peering_object(render) -> None:
    for values, resource in (
        (NON_DEFAULT, "kopfpeerings"),
        ({"peering": {"enabled": True, "name": "mp"}}, "clusterkopfpeerings"),
    ):
        rules = [r for r in rules_of(render(values)) if r["apiGroups"] == ["kopf.dev"]]
        patch = [r for r in rules if "patch" in r["verbs"]]
        assert patch and all(r["resources"] == [resource] and r["resourceNames"] == [values["peering"]["name"]]
                             for r in patch)  # fmt: skip
    assert not [r for r in rules_of(render({})) if r["apiGroups"] == ["kopf.dev"]]
    assert not by_kind(render({}), "ClusterKopfPeering")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_test_hook_calls_the_operator_liveness_endpoint(scenario: str, render) -> None:
    """`helm test`: a Service onto the operator's healthz port, created first, and a Pod calling it."""
    objects = render(SCENARIOS[scenario])
    tests = [o for o in objects if hook(o) == "test"]
    service, pod = one(tests, "Service"), one(tests, "Pod")
    weight = {o["kind"]: int(o["metadata"]["annotations"].get("helm.sh/hook-weight", "0")) for o in tests}
    assert weight["Service"] < weight["Pod"]
    for obj in tests:
        assert "hook-succeeded" in obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    operator = one(objects, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= operator["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in operator["spec"]["containers"][0]["ports"]}
    assert container_ports[port["targetPort"]] == int(deployment_env(objects)["MODELPRESS_LIVENESS_PORT"])
    (probe,) = pod["spec"]["containers"]
    assert probe["image"] == operator["spec"]["containers"][0]["image"]  # no extra image to pull
    assert pod["spec"]["restartPolicy"] == "Never"
    url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port['port']}/healthz"
    assert url in probe["args"][0]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_test_pod_meets_restricted_pod_security(scenario: str, render) -> None:
    (pod,) = [o for o in by_kind(render(SCENARIOS[scenario]), "Pod") if hook(o) == "test"]
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False  # it calls no Kubernetes API
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and container["resources"]["limits"]["memory"]


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_helm_test_probe_script_passes_against_a_healthz_endpoint(render, tmp_path) -> None:
    """The Pod's Python, run as is against a local /healthz (its Service URL pointed at it)."""
    (pod,) = [o for o in by_kind(render({}), "Pod") if hook(o) == "test"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    script = container["args"][0]
    (url,) = re.findall(r'"(http://[^"]+)/healthz"', script)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        local = script.replace(url, f"http://127.0.0.1:{server.server_address[1]}")
        done = subprocess.run([sys.executable, "-c", local], capture_output=True, text=True, timeout=60)
        server.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("/healthz 200")
