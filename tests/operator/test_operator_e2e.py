"""The operator end to end: kopf in a thread against the API-server and kubelet stand-ins.

The Jobs here run the real compression job (``python -m modelpress.jobs``) on a small
digits model with file:// storage, so the status carries real measurements.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from cluster import Cluster, digits_model_doc, running_operator
from helpers import condition, free_port
from k8s_emulator import rbac_usage
from prometheus_client import REGISTRY

from modelpress import api
from modelpress.operator import job_builder
from modelpress.operator.settings import from_env


def test_happy_path_to_validated_with_real_metrics(cluster: Cluster, digits_onnx: Path, tmp_path: Path) -> None:
    port = free_port()
    durations = {"outcome": "Validated"}
    # The histogram is process-wide: other tests in this process may have observed Jobs already.
    before = REGISTRY.get_sample_value("modelpress_job_duration_seconds_count", durations) or 0
    with running_operator(cluster, metrics_port=str(port)):
        created = cluster.apply_model(digits_model_doc(digits_onnx, tmp_path / "artifacts"))
        obj = cluster.wait_phase("digits", "Validated", 180)
        status = obj["status"]
        rh = api.recipe_hash(api.CompressedModel.model_validate(created).spec)
        assert status["recipeHash"] == rh and status["jobName"] == f"digits-{rh[:8]}"
        assert status["observedGeneration"] == 1
        results = status["results"]
        assert results["passed"] is True and results["metric"] == "accuracy"
        assert 0.5 < results["baseline"]["score"] <= 1.0
        assert results["compressed"]["sizeBytes"] < results["baseline"]["sizeBytes"]
        assert results["sizeRatio"] < 0.5 and results["speedup"] > 0
        artifact_dir = Path(status["artifact"]["storageUri"].removeprefix("file://"))
        assert (artifact_dir / "model" / "1" / "model.onnx").stat().st_size == status["artifact"]["sizeBytes"]
        for type_ in ("SpecValid", "Compressed", "Validated", "Ready"):
            assert condition(obj["status"], type_)["status"] == "True", type_
        events = cluster.wait_for("an event", lambda: cluster.events("digits"))
        assert [e["reason"] for e in events] == ["Validated"]

        # One Job, one ConfigMap, both owned by the model.
        jobs, cms = cluster.objects("batch", "jobs"), cluster.objects("", "configmaps")
        assert [j["metadata"]["name"] for j in jobs] == [status["jobName"]]
        assert [c["metadata"]["name"] for c in cms] == [status["jobName"]]
        assert jobs[0]["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        # ... and exactly what `modelpress render` prints (same builders).
        model = api.CompressedModel.model_validate(
            {**created, "metadata": {"name": "digits", "namespace": "ml", "uid": created["metadata"]["uid"]}}
        )
        assert jobs[0]["spec"] == job_builder.build_job(model, from_env())["spec"]

        # A serving-only change: new generation observed, no new Job, no new transition.
        ready_since = condition(obj["status"], "Ready")["lastTransitionTime"]
        cluster.patch_model("digits", {"spec": {"serving": {"enabled": False}}})
        obj = cluster.wait_for(
            "generation 2 observed",
            lambda: (m := cluster.model("digits")) and m["status"].get("observedGeneration") == 2 and m,
        )
        assert obj["metadata"]["generation"] == 2 and obj["status"]["phase"] == "Validated"
        assert condition(obj["status"], "Ready")["lastTransitionTime"] == ready_since
        assert len(cluster.objects("batch", "jobs")) == 1

        metrics_text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'modelpress_models{phase="Validated"} 1.0' in metrics_text
        assert f'modelpress_model_size_ratio{{name="digits",namespace="ml"}} {results["sizeRatio"]}' in metrics_text
        assert REGISTRY.get_sample_value("modelpress_job_duration_seconds_count", durations) == before + 1
        assert 'modelpress_reconciles_total{handler="job"}' in metrics_text

    # The operator never wrote spec or metadata of the model: status subresource only.
    used = rbac_usage(cluster.server.audit)
    model_writes = {(v, s) for v, g, r, s, _ in used if r == api.PLURAL and v not in ("get", "list", "watch")}
    assert model_writes == {("patch", "status")}, used
    assert ("create", "batch", "jobs", "", "ml") in used and ("list", "", "pods", "", "ml") in used


def test_rejection_names_the_threshold(cluster: Cluster, digits_onnx: Path, tmp_path: Path) -> None:
    with running_operator(cluster):
        cluster.apply_model(digits_model_doc(digits_onnx, tmp_path / "artifacts", maxSizeMB=0.0001))
        obj = cluster.wait_phase("digits", {"Rejected", "Failed"}, 180)
        assert obj["status"]["phase"] == "Rejected", obj["status"]
        validated = condition(obj["status"], "Validated")
        assert validated["status"] == "False" and validated["reason"] == "ThresholdExceeded"
        assert "maxSizeMB: " in validated["message"]  # as jobs/gate.py names the threshold
        assert condition(obj["status"], "Compressed")["status"] == "True"
        assert obj["status"]["results"]["failedThresholds"]
        assert "artifact" not in obj["status"] or not obj["status"]["artifact"]
        job = cluster.objects("batch", "jobs")[0]
        # Exit code 3 is deterministic: the pod failure policy fails the Job at once, no retries.
        assert job["status"]["failed"] == 1 and job["status"]["conditions"][-1]["reason"] == "PodFailurePolicy"
        events = cluster.wait_for("an event", lambda: cluster.events("digits"))
        assert [(e["type"], e["reason"]) for e in events] == [("Warning", "Rejected")]


def test_job_failure_reports_the_reason(cluster: Cluster, digits_onnx: Path, tmp_path: Path) -> None:
    doc = digits_model_doc(digits_onnx, tmp_path / "artifacts")
    doc["spec"]["source"]["storageUri"] = f"file://{tmp_path}/missing.onnx"
    with running_operator(cluster):
        cluster.apply_model(doc)
        obj = cluster.wait_phase("digits", {"Failed", "Validated", "Rejected"}, 180)
        assert obj["status"]["phase"] == "Failed"
        compressed = condition(obj["status"], "Compressed")
        assert compressed["status"] == "False" and compressed["reason"] == "JobFailed"
        assert "missing.onnx" in compressed["message"], compressed
        assert len(cluster.objects("", "pods")) == 1  # no endless retries
        events = cluster.wait_for("an event", lambda: cluster.events("digits"))
        assert [(e["type"], e["reason"]) for e in events] == [("Warning", "JobFailed")]
