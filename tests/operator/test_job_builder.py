"""The pure builders: deterministic manifests that a real API server would accept."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from modelpress import api
from modelpress.operator import job_builder
from modelpress.operator.settings import Settings

K8S_VERSION = "1.33.0"
REPO = Path(__file__).resolve().parents[2]

BASE = {
    "apiVersion": api.API_VERSION,
    "kind": api.KIND,
    "metadata": {"name": "digits", "namespace": "ml", "uid": "0b5c3d1e-1111-2222-3333-444455556666"},
    "spec": {
        "source": {"storageUri": "s3://models/digits/model.pt2", "format": "pytorch-export", "task": "classification"},
        "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
        "validation": {
            "dataset": {"storageUri": "s3://models/digits/val.npz", "format": "npz"},
            "metric": "accuracy",
            "maxAccuracyDrop": {"absolute": 0.02},
        },
        "output": {"storageUri": "s3://models/out/"},
    },
}


def model(**job: object) -> api.CompressedModel:
    doc = copy.deepcopy(BASE)
    doc["spec"]["job"] = job
    return api.CompressedModel.model_validate(doc)


def validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_manifests_are_valid_kubernetes_objects() -> None:
    m = model(
        gpu=2,
        queueName="gpu",
        nodeSelector={"pool": "a100"},
        priorityClassName="batch-low",
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        serviceAccountName="compress-sa",
        activeDeadlineSeconds=600,
        backoffLimit=1,
        resources={"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
    )
    for obj in job_builder.build_compression(m, Settings()):
        validate(obj)


def test_job_shape() -> None:
    m = model(
        gpu=2,
        queueName="gpu",
        nodeSelector={"pool": "a100"},
        priorityClassName="batch-low",
        activeDeadlineSeconds=600,
        backoffLimit=1,
    )
    rh = api.recipe_hash(m.spec)
    job = job_builder.build_job(m, Settings(job_image="img:1", job_ttl_seconds=77))
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == f"digits-{rh[:8]}"
    assert meta["labels"]["modelpress.io/compressedmodel"] == "digits"
    assert meta["labels"]["modelpress.io/recipe-hash"] == rh
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert spec["suspend"] is True
    owner = meta["ownerReferences"][0]
    assert owner["kind"] == "CompressedModel" and owner["controller"] and owner["blockOwnerDeletion"]
    assert owner["uid"] == BASE["metadata"]["uid"]
    assert (spec["activeDeadlineSeconds"], spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (600, 1, 77)
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [1, 3]
    # No containerName: the rule covers the init containers too (Kubernetes applies an
    # onExitCodes rule without one to every container, init containers included).
    assert "containerName" not in rule["onExitCodes"]
    pod = spec["template"]["spec"]
    download, compress = pod["initContainers"]
    (c,) = pod["containers"]
    assert [download["name"], compress["name"], c["name"]] == ["download", "compress", "upload"]
    for container, phase in ((download, "download"), (compress, "compress"), (c, "upload")):
        assert container["image"] == "img:1"
        assert container["command"] == [
            "python",
            "-m",
            "modelpress.jobs",
            "--spec",
            "/etc/modelpress/spec.yaml",
            "--termination-log",
            "/dev/termination-log",
            "--workdir",
            "/tmp/work",
            "--phase",
            phase,
        ]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # The GPU and the spec's resources go to the step that compresses; the others only move bytes.
    assert compress["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and "nvidia.com/gpu" not in download["resources"]["limits"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["priorityClassName"] == "batch-low"
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert all(e["name"] != "AWS_SECRET_ACCESS_KEY" for e in c["env"])


def containers(pod: dict) -> list[dict]:
    return [*pod["initContainers"], *pod["containers"]]


def test_restricted_pod_security() -> None:
    """Every container meets the restricted Pod Security Standard."""
    pod = job_builder.build_job(model(), Settings())["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in containers(pod):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]  # one scratch volume shared by the three steps
    c = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert (
        volumes[mounts["/etc/modelpress"]]["configMap"]["name"]
        == job_builder.build_config_map(model(), Settings())["metadata"]["name"]
    )


def test_cpu_job_has_no_gpu_and_a_service_account_brings_no_api_token() -> None:
    job = job_builder.build_job(model(gpu=0, serviceAccountName="s3-writer"), Settings(default_gpu=1))
    pod = job["spec"]["template"]["spec"]
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in containers(pod))
    assert "tolerations" not in pod and "suspend" not in job["spec"]
    # The identity reaches storage (IRSA, workload identity); the job never calls the Kubernetes API.
    assert pod["serviceAccountName"] == "s3-writer" and pod["automountServiceAccountToken"] is False
    # Identity webhooks that mount web-identity tokens into every container skip compress.
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/skip-containers"] == "compress"
    assert annotations["azure.workload.identity/skip-containers"] == "compress"
    # The operator default applies when the spec leaves gpu unset.
    default = job_builder.build_job(model(), Settings(default_gpu=1))
    assert default["spec"]["template"]["spec"]["initContainers"][1]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_only_the_download_and_upload_steps_get_credentials_and_network_paths() -> None:
    """The compress step parses the hostile model and data: no credentials reach it, its
    memory and scratch space are bounded, and it cannot write where the output goes."""
    settings = Settings(job_scratch_size_limit="20Gi", job_memory_limit="12Gi")
    pod = job_builder.build_job(model(serviceAccountName="s3-writer"), settings)["spec"]["template"]["spec"]
    download, compress = pod["initContainers"]
    (upload,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert not any("serviceaccount" in m["mountPath"] for c in containers(pod) for m in c["volumeMounts"])
    assert {m["name"] for m in compress["volumeMounts"]} == {"spec", "scratch"}
    assert {e["name"] for e in compress["env"]} == {"HOME", "MODELPRESS_RECIPE_HASH"}
    for c in (download, upload):
        assert {"name": "MODELPRESS_PVC_ROOT", "value": "/mnt/pvc"} in c["env"]
    assert all("envFrom" not in c and "secret" not in json.dumps(c).lower() for c in (compress,))
    scratch = next(v for v in pod["volumes"] if v["name"] == "scratch")
    assert scratch["emptyDir"] == {"sizeLimit": "20Gi"}
    assert compress["resources"]["limits"]["memory"] == "12Gi"
    for c in (download, upload):
        assert c["resources"] == job_builder.IO_RESOURCES
    # A memory request without a limit becomes the limit (a default below the request would be invalid).
    asked = model(resources={"requests": {"memory": "64Gi"}})
    compress = job_builder.build_job(asked, settings)["spec"]["template"]["spec"]["initContainers"][1]
    assert compress["resources"]["limits"]["memory"] == "64Gi"
    limited = model(resources={"limits": {"memory": "8Gi"}})
    compress = job_builder.build_job(limited, settings)["spec"]["template"]["spec"]["initContainers"][1]
    assert compress["resources"]["limits"]["memory"] == "8Gi"
    for obj in job_builder.build_compression(model(serviceAccountName="s3-writer"), settings):
        validate(obj)


@pytest.mark.parametrize("name", ["job_scratch_size_limit", "job_memory_limit"])
def test_size_settings_must_be_quantities(name: str) -> None:
    from modelpress.operator import settings as settings_mod

    env = {"MODELPRESS_" + name.upper(): "lots"}
    with pytest.raises(ValueError, match=f"MODELPRESS_{name.upper()} must be a Kubernetes quantity"):
        settings_mod.from_env(env)


def test_config_map_carries_the_spec_the_job_reads() -> None:
    m = model()
    cm = job_builder.build_config_map(m, Settings())
    doc = yaml.safe_load(cm["data"]["spec.yaml"])
    assert api.CompressedModel.model_validate(doc).spec == m.spec
    assert cm["metadata"]["ownerReferences"][0]["uid"] == BASE["metadata"]["uid"]


def test_deterministic_and_serving_changes_keep_the_job_name() -> None:
    a = job_builder.build_job(model(), Settings())
    b = job_builder.build_job(model(), Settings())
    assert a == b
    doc = copy.deepcopy(BASE)
    doc["spec"]["serving"] = {"enabled": True, "autoscaling": {"maxReplicas": 9}}
    c = job_builder.build_job(api.CompressedModel.model_validate(doc), Settings())
    assert c["metadata"]["name"] == a["metadata"]["name"]
    doc["spec"]["compression"]["steps"][0]["quantize"]["mode"] = "fp16"
    d = job_builder.build_job(api.CompressedModel.model_validate(doc), Settings())
    assert d["metadata"]["name"] != a["metadata"]["name"]


def run_render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "render", *args], capture_output=True, text=True, timeout=120
    )


def test_render_prints_valid_manifests(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    del doc["metadata"]["uid"]
    path = tmp_path / "cm.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = run_render(str(path))
    assert out.returncode == 0, out.stderr
    objs = list(yaml.safe_load_all(out.stdout))
    assert [o["kind"] for o in objs] == ["ConfigMap", "Job"]
    pod = objs[1]["spec"]["template"]["spec"]
    assert [c["name"] for c in containers(pod)] == ["download", "compress", "upload"]
    for obj in objs:
        validate(obj)
    as_json = run_render(str(path), "-o", "json")
    assert json.loads(as_json.stdout)["items"] == objs


def test_render_names_the_bad_field(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["validation"]["metric"] = "mse"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = run_render(str(path))
    assert out.returncode == 1
    assert "spec.validation.metric" in out.stderr and "Traceback" not in out.stderr
    missing = run_render(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_render_without_a_prometheus_for_keda_says_where_to_set_one(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "examples" / "serving-keda.yaml").read_text())
    del doc["spec"]["serving"]["rollout"]["analysis"]["prometheusUrl"]
    path = tmp_path / "keda.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = run_render(str(path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("modelpress render: spec.serving.autoscaling.metrics[0].prometheus.serverAddress")
    assert "--prometheus-url" in out.stderr


@pytest.mark.parametrize("name", ["a" * 55])
def test_too_long_name_is_refused(tmp_path: Path, name: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = name
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = run_render(str(path))
    assert out.returncode == 1 and "metadata.name" in out.stderr


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LONG_CLAIM = "calibration-data." + "x" * 60


def pvc_model() -> api.CompressedModel:
    doc = copy.deepcopy(BASE)
    spec = doc["spec"]
    spec["source"]["storageUri"] = "pvc://models/digits/model.pt2"
    spec["validation"]["dataset"]["storageUri"] = "pvc://datasets/digits/val.npz"
    spec["validation"]["calibration"] = {"storageUri": f"pvc://{LONG_CLAIM}/calib.npz", "format": "npz"}
    spec["compression"]["steps"] = [
        {"distill": {"student": {"storageUri": "pvc://datasets/student.pt2"}}},
        {"quantize": {"mode": "dynamic"}},
    ]
    spec["output"]["storageUri"] = "pvc://models/out/"  # the source's claim, written too
    return api.CompressedModel.model_validate(doc)


def test_every_pvc_claim_is_mounted_once_read_only_unless_written() -> None:
    m = pvc_model()
    assert job_builder.pvc_claims(m.spec) == {"datasets": False, "models": True, LONG_CLAIM: False}
    pod = job_builder.build_job(m, Settings())["spec"]["template"]["spec"]
    download, compress = pod["initContainers"]
    (upload,) = pod["containers"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert sorted(claims) == sorted(["datasets", "models", LONG_CLAIM])
    for claim, volume in claims.items():
        assert re.match(DNS_LABEL, volume["name"]) and len(volume["name"]) <= 63
        assert volume["persistentVolumeClaim"]["readOnly"] is not (claim == "models")
    # Download and compress read every input claim, read-only (a downloaded pvc:// input is a
    # link into its claim); only upload mounts the output's claim, and only it may write.
    for container in (download, compress):
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        for claim, volume in claims.items():
            assert mounts[volume["name"]] == {
                "name": volume["name"],
                "mountPath": f"/mnt/pvc/{claim}",
                "readOnly": True,
            }
    upload_claims = [m for m in upload["volumeMounts"] if m["name"].startswith("pvc-")]
    assert upload_claims == [{"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": False}]
    assert claims["models"]["name"] == "pvc-models"  # readable where the claim name is a valid label
    assert len({v["name"] for v in pod["volumes"]}) == len(pod["volumes"])
    assert {"name": "MODELPRESS_PVC_ROOT", "value": "/mnt/pvc"} in upload["env"]
    # The writable claim is not re-chowned file by file on every pod start.
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    for obj in job_builder.build_compression(m, Settings()):
        validate(obj)


def test_a_spec_without_pvc_uris_mounts_no_claims() -> None:
    pod = job_builder.build_job(model(), Settings())["spec"]["template"]["spec"]
    assert job_builder.pvc_claims(model().spec) == {}
    assert [v["name"] for v in pod["volumes"]] == ["spec", "scratch"]
    for c in containers(pod):
        assert [m["mountPath"] for m in c["volumeMounts"]] == ["/etc/modelpress", "/tmp"]
