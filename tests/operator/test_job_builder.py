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
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "img:1"
    assert c["command"] == [
        "python",
        "-m",
        "modelpress.jobs",
        "--spec",
        "/etc/modelpress/spec.yaml",
        "--termination-log",
        "/dev/termination-log",
        "--workdir",
        "/tmp/work",
    ]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["priorityClassName"] == "batch-low"
    assert pod["restartPolicy"] == "Never" and c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert all(e["name"] != "AWS_SECRET_ACCESS_KEY" for e in c["env"])


def test_restricted_pod_security() -> None:
    pod = job_builder.build_job(model(), Settings())["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sc, psc = c["securityContext"], pod["securityContext"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert (
        volumes[mounts["/etc/modelpress"]]["configMap"]["name"]
        == job_builder.build_config_map(model(), Settings())["metadata"]["name"]
    )


def test_cpu_job_has_no_gpu_and_service_account_gets_token() -> None:
    job = job_builder.build_job(model(gpu=0, serviceAccountName="s3-writer"), Settings(default_gpu=1))
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0].get("resources", {}).get("limits", {})
    assert "tolerations" not in pod and "suspend" not in job["spec"]
    assert pod["serviceAccountName"] == "s3-writer" and pod["automountServiceAccountToken"] is True
    # The operator default applies when the spec leaves gpu unset.
    default = job_builder.build_job(model(), Settings(default_gpu=1))
    assert default["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


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
    container = pod["containers"][0]
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert sorted(claims) == sorted(["datasets", "models", LONG_CLAIM])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for claim, volume in claims.items():
        writable = claim == "models"
        assert re.match(DNS_LABEL, volume["name"]) and len(volume["name"]) <= 63
        assert volume["persistentVolumeClaim"]["readOnly"] is not writable
        assert mounts[volume["name"]] == {
            "name": volume["name"],
            "mountPath": f"/mnt/pvc/{claim}",
            "readOnly": not writable,
        }
    assert claims["models"]["name"] == "pvc-models"  # readable where the claim name is a valid label
    assert len({v["name"] for v in pod["volumes"]}) == len(pod["volumes"])
    assert {"name": "MODELPRESS_PVC_ROOT", "value": "/mnt/pvc"} in container["env"]
    # The writable claim is not re-chowned file by file on every pod start.
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    for obj in job_builder.build_compression(m, Settings()):
        validate(obj)


def test_a_spec_without_pvc_uris_mounts_no_claims() -> None:
    pod = job_builder.build_job(model(), Settings())["spec"]["template"]["spec"]
    assert job_builder.pvc_claims(model().spec) == {}
    assert [v["name"] for v in pod["volumes"]] == ["spec", "scratch"]
    assert [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]] == ["/etc/modelpress", "/tmp"]
