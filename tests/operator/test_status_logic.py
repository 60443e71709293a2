"""Pure status logic: conditions per API conventions and reading a finished Job."""

from __future__ import annotations

import argparse

import pytest
from cluster import sample_model
from hypothesis import given, settings
from hypothesis import strategies as st_

from modelpress import api
from modelpress.operator import phases
from modelpress.operator import settings as settings_mod
from modelpress.operator import status as st
from modelpress.operator.validation import SpecInvalid, format_problems, parse_model
from modelpress.summary import JobSummary
from modelpress.validate import check_object

SPEC = sample_model()["spec"]


def pod(message: str | None = None, reason: str = "Error", waiting: str | None = None) -> dict:
    terminated = {"exitCode": 1, "reason": reason}
    if message:
        terminated["message"] = message
    state = {"waiting": {"reason": waiting}} if waiting else {"terminated": terminated}
    return {
        "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"containerStatuses": [{"state": state}]},
    }


def job(kind: str, reason: str = "") -> dict:
    return {"status": {"conditions": [{"type": kind, "status": "True", "reason": reason}]}}


def test_last_transition_time_moves_only_on_transition() -> None:
    first = st.merge_conditions([], [st.condition("Ready", False, "Compressing")], 1, "t1")
    same = st.merge_conditions(first, [st.condition("Ready", False, "StillCompressing", "x")], 2, "t2")
    flipped = st.merge_conditions(same, [st.condition("Ready", True, "Validated")], 2, "t3")
    assert first[0]["lastTransitionTime"] == "t1"
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["reason"] == "StillCompressing"
    assert same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_validated_summary() -> None:
    summary = JobSummary(
        outcome="Validated",
        recipeHash="abc",
        artifact={"storageUri": "s3://m/out/abc", "sizeBytes": 5},
        results={"passed": True, "accuracyDrop": 0.001, "speedup": 3.0, "sizeRatio": 0.25},
    )
    fields, conds, event = st.outcome_status(
        SPEC, job("Complete"), [pod(summary.to_termination_message(), "Completed")]
    )
    assert fields["phase"] == "Validated" and fields["artifact"]["storageUri"] == "s3://m/out/abc"
    assert {c["type"]: c["status"] for c in conds} == {"Compressed": "True", "Validated": "True", "Ready": "True"}
    assert event[0] == "Normal" and "speedup 3.00x" in event[2]
    _, with_serving, _ = st.outcome_status(
        {**SPEC, "serving": {}}, job("Complete"), [pod(summary.to_termination_message(), "Completed")]
    )
    assert next(c for c in with_serving if c["type"] == "Ready")["reason"] == "RolloutPending"


def test_rejected_summary_names_thresholds() -> None:
    summary = JobSummary(
        outcome="Rejected",
        reason="best trial broke maxLatencyMs",
        results={"passed": False, "failedThresholds": ["maxLatencyMs", "minSpeedup"]},
    )
    fields, conds, event = st.outcome_status(
        SPEC, job("Failed", "PodFailurePolicy"), [pod(summary.to_termination_message())]
    )
    validated = next(c for c in conds if c["type"] == "Validated")
    assert fields["phase"] == "Rejected" and validated["reason"] == "ThresholdExceeded"
    assert "maxLatencyMs" in validated["message"] and "minSpeedup" in validated["message"]
    assert event[:2] == ("Warning", "Rejected") and "artifact" not in fields


@pytest.mark.parametrize(
    ("job_reason", "pods", "expected"),
    [
        ("DeadlineExceeded", [pod(waiting="ImagePullBackOff")], "ImagePullBackOff"),
        ("BackoffLimitExceeded", [pod(reason="OOMKilled")], "OOMKilled"),
        ("DeadlineExceeded", [], "DeadlineExceeded"),
        ("BackoffLimitExceeded", [pod("Traceback...\nMemoryError (log tail)")], "BackoffLimitExceeded"),
    ],
)
def test_failure_reason_from_pod_or_job(job_reason: str, pods: list, expected: str) -> None:
    fields, conds, event = st.outcome_status(SPEC, job("Failed", job_reason), pods)
    assert fields["phase"] == "Failed"
    assert next(c for c in conds if c["type"] == "Compressed")["reason"] == expected
    assert event[1] == expected


def test_failed_summary_reason_wins() -> None:
    summary = JobSummary(outcome="Failed", reason="source.storageUri: s3://m/model.onnx not found")
    _, conds, _ = st.outcome_status(SPEC, job("Failed", "PodFailurePolicy"), [pod(summary.to_termination_message())])
    compressed = next(c for c in conds if c["type"] == "Compressed")
    assert compressed["reason"] == "JobFailed" and "not found" in compressed["message"]


def test_success_without_summary_is_not_validated() -> None:
    fields, conds, _ = st.outcome_status(SPEC, job("Complete"), [pod(None, "Completed")])
    assert fields["phase"] == "Failed"
    assert next(c for c in conds if c["type"] == "Compressed")["reason"] == "NoSummary"


def test_parse_model_reports_each_field_as_validate_does() -> None:
    spec = {
        **SPEC,
        "validation": {**SPEC["validation"], "metric": "mse"},
        "compression": {"steps": [{"prune": {"sparsity": 0.5, "structure": "neurons"}}]},
    }
    body = {"metadata": {"name": "m", "namespace": "ml", "uid": "u1", "managedFields": []}, "spec": spec}
    with pytest.raises(SpecInvalid) as err:
        parse_model(body)
    paths = [p.path for p in err.value.problems]
    assert "spec.validation.metric" in paths and "spec.compression.steps[0].prune.structure" in paths
    # Word for word what `modelpress validate` says about the same resource.
    resource = {"apiVersion": api.API_VERSION, "kind": api.KIND, **body}
    assert err.value.problems == check_object(resource)
    assert format_problems(err.value.problems).startswith(err.value.problems[0].text() + " | ")
    assert "metric 'mse' does not fit task 'classification'; use one of accuracy" in str(err.value)
    with pytest.raises(SpecInvalid) as err:
        parse_model({"metadata": {"name": "m"}, "spec": {**SPEC, "output": {}}})
    assert [p.path for p in err.value.problems] == ["spec.output.storageUri"]
    with pytest.raises(SpecInvalid) as err:
        parse_model({"metadata": {"name": "m"}})
    assert err.value.problems[0].text() == "spec: required field is missing; add spec"


def test_settings_from_env_and_flags() -> None:
    env = {"MODELPRESS_NAMESPACES": "a, b", "MODELPRESS_MAX_CONCURRENT_JOBS": "4", "MODELPRESS_STANDALONE": "false"}
    s = settings_mod.from_env(env)
    assert s.namespaces == ("a", "b") and s.max_concurrent_jobs == 4 and not s.standalone
    with pytest.raises(ValueError, match="MODELPRESS_DEFAULT_GPU"):
        settings_mod.from_env({"MODELPRESS_DEFAULT_GPU": "two"})
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    flags = settings_mod.from_args(
        parser.parse_args(["-n", "ml", "-n", "ops", "--max-concurrent-jobs", "2", "--peering", "modelpress-ha"])
    )
    assert flags.namespaces == ("ml", "ops") and flags.max_concurrent_jobs == 2
    assert not flags.standalone and flags.peering_name == "modelpress-ha"
    assert settings_mod.from_args(parser.parse_args(["-A"])).cluster_wide


def test_model_metrics_have_bounded_labels_and_reset() -> None:
    from prometheus_client import REGISTRY

    from modelpress.operator import metrics

    labels = {"namespace": "t", "name": "gauge-test"}
    metrics.observe_model("t", "gauge-test", {"phase": "Rejected", "results": {"speedup": 1.5, "sizeRatio": 0.4}})
    assert REGISTRY.get_sample_value("modelpress_model_speedup", labels) == 1.5
    assert REGISTRY.get_sample_value("modelpress_models", {"phase": "Rejected"}) >= 1
    metrics.reset()
    assert REGISTRY.get_sample_value("modelpress_model_speedup", labels) is None
    assert REGISTRY.get_sample_value("modelpress_model_size_ratio", labels) is None
    assert REGISTRY.get_sample_value("modelpress_models", {"phase": "Rejected"}) == 0


@pytest.mark.parametrize(("name", "fix"), [("my.model", "use a DNS-1123 label"), ("x" * 55, "allowed at most 54")])
def test_names_a_job_cannot_carry_are_spec_problems_not_crashes(name: str, fix: str) -> None:
    body = {"metadata": {"name": name, "namespace": "ml"}, "spec": SPEC}
    with pytest.raises(SpecInvalid) as info:
        parse_model(body)
    (problem,) = info.value.problems
    assert problem.path == "metadata.name" and problem.fix.startswith(fix)
    assert "<name>-<hash8>" in problem.fix and "63 characters" in problem.fix
    assert parse_model({"metadata": {"name": "ok-name", "namespace": "ml"}, "spec": SPEC}).metadata.name == "ok-name"


def test_suspended_job_is_queued_admitted_job_is_compressing() -> None:
    suspended = {"spec": {"suspend": True}, "status": {}}
    assert st.job_suspended(suspended) and not st.job_suspended({"spec": {"suspend": False}})
    assert not st.job_suspended({"spec": {"suspend": True}, **job("Failed", "DeadlineExceeded")})
    conds = phases.progress_conditions("m-1234abcd", True, "gpus")
    assert phases.progress_phase(True) == "Queued"
    assert conds[0]["reason"] == "WaitingForKueue" and "LocalQueue gpus" in conds[0]["message"]
    conds = phases.progress_conditions("m-1234abcd", False)
    assert phases.progress_phase(False) == "Compressing"
    assert [c["reason"] for c in conds] == ["JobRunning", "Compressing"]


def stuck(reason: str, phase: str = "Pending", message: str = "") -> dict:
    waiting = {"reason": reason, **({"message": message} if message else {})}
    return {
        "metadata": {"name": "m-1234abcd-x1y2z"},
        "spec": {"containers": [{"name": "compress", "image": "reg.example/mp:1"}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "compress", "state": {"waiting": waiting}}]},
    }


def test_stuck_pod_names_pod_image_and_fix() -> None:
    reason, message = st.stuck_pod([stuck("ContainerCreating"), stuck("ErrImagePull", message="not found")])
    assert reason == "ErrImagePull"
    assert "m-1234abcd-x1y2z" in message and "reg.example/mp:1" in message and "not found" in message
    assert "imagePullSecrets" in message
    reason, message = st.stuck_pod([stuck("CreateContainerConfigError", message='secret "s3" not found')])
    assert reason == "CreateContainerConfigError" and "Secrets and ConfigMaps" in message
    assert st.stuck_pod([stuck("ContainerCreating"), stuck("ImagePullBackOff", phase="Failed")]) is None
    assert st.stuck_pod([pod(reason="OOMKilled")]) is None


def unschedulable(reason: str = "Unschedulable", message: str = "") -> dict:
    cond = {"type": "PodScheduled", "status": "False", "reason": reason, **({"message": message} if message else {})}
    return {"metadata": {"name": "m-1234abcd-q9w8e"}, "status": {"phase": "Pending", "conditions": [cond]}}


def test_unschedulable_pod_names_pod_scheduler_message_and_fix() -> None:
    scheduler = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    reason, message = st.stuck_pod([stuck("ContainerCreating"), unschedulable(message=scheduler)])
    assert reason == "Unschedulable" and reason in st.STUCK_POD_REASONS
    assert "m-1234abcd-q9w8e" in message and scheduler in message
    assert all(hint in message for hint in ("GPU quota", "node pool", "spec.job.resources", "spec.job.tolerations"))
    # Other PodScheduled reasons (scheduling gates) and a scheduled pod are no stuck pod.
    assert st.stuck_pod([unschedulable(reason="SchedulingGated")]) is None
    scheduled = {"metadata": {"name": "p"}, "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}
    assert st.stuck_pod([scheduled]) is None


MODEL_KEYS = st_.sampled_from([("a", "m1"), ("a", "m2"), ("b", "m1"), ("b", "m3")])
PHASE_VALUES = st_.sampled_from([p.value for p in api.Phase] + ["Unknown", None])


@settings(max_examples=60, deadline=None)
@given(st_.lists(st_.tuples(MODEL_KEYS, PHASE_VALUES, st_.booleans()), max_size=30))
def test_models_by_phase_gauge_follows_phase_changes_and_deletions(ops: list) -> None:
    """Counted per event, the gauge equals a recount of the models' last phases."""
    from prometheus_client import REGISTRY

    from modelpress.operator import metrics

    metrics.reset()
    last: dict[tuple[str, str], str] = {}
    for (ns, name), phase, deleted in ops:
        if deleted:
            metrics.forget_model(ns, name)
            last.pop((ns, name), None)
        else:
            metrics.observe_model(ns, name, {"phase": phase})
            last[(ns, name)] = phase or "Pending"
    for phase in api.Phase:
        expected = sum(p == phase.value for p in last.values())
        assert REGISTRY.get_sample_value("modelpress_models", {"phase": phase.value}) == expected, phase
    assert REGISTRY.get_sample_value("modelpress_models", {"phase": "Unknown"}) is None
    metrics.reset()
    assert all(REGISTRY.get_sample_value("modelpress_models", {"phase": p.value}) == 0 for p in api.Phase)


def test_the_job_fails_at_once_on_exactly_the_deterministic_exit_codes() -> None:
    """The builder's podFailurePolicy and the job's exit codes share one definition."""
    from modelpress.operator import job_builder
    from modelpress.summary import DETERMINISTIC_EXIT_CODES

    model = api.CompressedModel.model_validate(
        {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "m"}, "spec": SPEC}
    )
    rules = job_builder.build_job(model, settings_mod.Settings())["spec"]["podFailurePolicy"]["rules"]
    (fail_job,) = [r for r in rules if r["action"] == "FailJob"]
    assert fail_job["onExitCodes"]["values"] == [int(c) for c in DETERMINISTIC_EXIT_CODES]
    codes = {JobSummary(outcome=o).exit_code for o in ("Failed", "Rejected", "Validated")}
    assert set(DETERMINISTIC_EXIT_CODES) == codes - {JobSummary(outcome="Validated").exit_code}
