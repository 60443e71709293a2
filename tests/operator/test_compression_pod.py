"""The compression pod's three steps (download -> compress -> upload) on the kubelet stand-in.

The Job is the builder's, run container by container as the kubelet runs init
containers; the outcome is what ``status.outcome_status`` reads from the pod status,
i.e. what the operator would write. The operator itself is exercised end to end in
test_operator_e2e.py on the same stand-in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, digits_model_doc, sample_model

from modelpress import api
from modelpress.operator import job_builder
from modelpress.operator import status as st
from modelpress.operator.settings import Settings


def digits_model(digits: Path, out: Path, source: str | None = None, **validation: Any) -> api.CompressedModel:
    return api.CompressedModel.model_validate(digits_model_doc(digits, out, source=source, **validation))


def run_pod(cluster: Cluster, model: api.CompressedModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create the builder's ConfigMap and Job; wait for the Job to finish; (job, pod)."""
    for obj in job_builder.build_compression(model, Settings(job_image="modelpress-jobs:test")):
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        plural = "jobs" if obj["kind"] == "Job" else "configmaps"
        cluster.sync(cluster.server.create, group, plural, "ml", obj)
    name = job_builder.job_name("digits", api.recipe_hash(model.spec))

    def finished() -> dict[str, Any] | None:
        job = cluster.sync(cluster.server.get, "batch", "jobs", "ml", name)
        return job if job and st.job_finished(job) else None

    job = cluster.wait_for("the Job to finish", finished, 240)
    (pod,) = cluster.objects("", "pods")
    return job, pod


def states(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = pod["status"]
    return {cs["name"]: cs["state"] for cs in [*status.get("initContainerStatuses", []), *status["containerStatuses"]]}


def test_validated_through_three_containers(cluster: Cluster, digits_onnx: Path, tmp_path: Path) -> None:
    model = digits_model(digits_onnx, tmp_path / "artifacts")
    job, pod = run_pod(cluster, model)
    by_name = states(pod)
    assert list(by_name) == ["download", "compress", "upload"]
    assert all(s["terminated"]["exitCode"] == 0 for s in by_name.values()), by_name
    # Only upload reports: compress succeeded without a termination message of its own.
    assert "message" not in by_name["compress"]["terminated"] and "message" not in by_name["download"]["terminated"]
    summary = json.loads(by_name["upload"]["terminated"]["message"])
    assert summary["outcome"] == "Validated"
    fields, conds, event = st.outcome_status(model.spec.model_dump(by_alias=True), job, [pod])
    assert fields["phase"] == "Validated" and event[1] == "Validated"
    artifact_dir = Path(fields["artifact"]["storageUri"].removeprefix("file://"))
    assert (artifact_dir / "model" / "1" / "model.onnx").stat().st_size == fields["artifact"]["sizeBytes"]


def test_rejected_model_still_has_its_report_uploaded(cluster: Cluster, digits_onnx: Path, tmp_path: Path) -> None:
    model = digits_model(digits_onnx, tmp_path / "artifacts", maxSizeMB=0.0001)
    job, pod = run_pod(cluster, model)
    by_name = states(pod)
    assert by_name["compress"]["terminated"]["exitCode"] == 0  # rejected is no failure of the step
    assert by_name["upload"]["terminated"]["exitCode"] == 3
    assert job["status"]["conditions"][-1]["reason"] == "PodFailurePolicy"
    fields, conds, _ = st.outcome_status(model.spec.model_dump(by_alias=True), job, [pod])
    assert fields["phase"] == "Rejected" and "maxSizeMB: " in conds[1]["message"]
    out = tmp_path / "artifacts" / api.recipe_hash(model.spec)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # the report, no model
    assert json.loads((out / "report.json").read_text())["outcome"] == "Rejected"


@pytest.mark.parametrize("step", ["download", "compress"])
def test_a_failing_init_container_reports_why(cluster: Cluster, digits_onnx: Path, tmp_path: Path, step: str) -> None:
    """The pod stops at the failing init container; upload never starts; its message is the summary."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    source = f"file://{tmp_path}/missing.onnx" if step == "download" else f"file://{broken}"
    model = digits_model(digits_onnx, tmp_path / "artifacts", source=source)
    job, pod = run_pod(cluster, model)
    by_name = states(pod)
    assert by_name[step]["terminated"]["exitCode"] == 1
    assert by_name["upload"] == {"waiting": {"reason": "PodInitializing"}}
    assert job["status"]["conditions"][-1]["reason"] == "PodFailurePolicy"  # exit 1 of an init container
    _, conds, event = st.outcome_status(model.spec.model_dump(by_alias=True), job, [pod])
    assert event[:2] == ("Warning", "JobFailed")
    assert ("missing.onnx" if step == "download" else "source") in conds[0]["message"], conds[0]
    assert not (tmp_path / "artifacts").exists()


def terminated(name: str, code: int, message: str = "", reason: str = "") -> dict[str, Any]:
    state = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error")}
    if message:
        state["message"] = message
    return {"name": name, "state": {"terminated": state}}


def test_outcome_never_takes_a_successful_compress_message_for_the_upload() -> None:
    """compress wrote Validated, then upload was OOM-killed without a message: nothing was uploaded."""
    from modelpress.summary import JobSummary

    validated = JobSummary(outcome="Validated", recipeHash="abc").to_termination_message()
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "initContainerStatuses": [terminated("download", 0), terminated("compress", 0, validated)],
            "containerStatuses": [terminated("upload", 137, reason="OOMKilled")],
        },
    }
    assert st.termination_message([pod]) is None
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    fields, conds, _ = st.outcome_status(sample_model()["spec"], failed, [pod])
    assert fields["phase"] == "Failed" and conds[0]["reason"] == "OOMKilled"


def test_an_oom_killed_compress_step_is_named() -> None:
    pod = {
        "status": {
            "initContainerStatuses": [terminated("download", 0), terminated("compress", 137, reason="OOMKilled")],
            "containerStatuses": [{"name": "upload", "state": {"waiting": {"reason": "PodInitializing"}}}],
        }
    }
    assert st.pod_failure_reason([pod]) == "OOMKilled"


def test_an_init_container_that_cannot_start_is_a_stuck_pod() -> None:
    """While an init container waits for its image, the main container only shows PodInitializing."""
    pod = {
        "metadata": {"name": "digits-1234abcd-x1y2z"},
        "spec": {
            "initContainers": [{"name": "download", "image": "reg.example/mp:9"}, {"name": "compress", "image": "x"}],
            "containers": [{"name": "upload", "image": "x"}],
        },
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": "download", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}},
                {"name": "compress", "state": {"waiting": {"reason": "PodInitializing"}}},
            ],
            "containerStatuses": [{"name": "upload", "state": {"waiting": {"reason": "PodInitializing"}}}],
        },
    }
    reason, message = st.stuck_pod([pod])
    assert reason == "ImagePullBackOff" and "reg.example/mp:9" in message and "not found" in message
