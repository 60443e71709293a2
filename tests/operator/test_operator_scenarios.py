"""Operator behaviour around the Job: invalid specs, recipe changes, restarts, API faults,
deletion, the concurrency cap and pod-level failures.

The kubelet stand-in here finishes Jobs with a summary written the way the job writes it
(``JobSummary.to_termination_message``), and a gate lets a test hold a Job "running".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, ContainerResult, Gate, running_operator, sample_model
from helpers import condition
from k8s_emulator import Fault

from modelpress.operator.validation import format_problems
from modelpress.validate import check_object

DOC = sample_model()


def doc(name: str = "digits", **spec: Any) -> dict[str, Any]:
    return sample_model(name, **spec)


@pytest.fixture()
def gate() -> Gate:
    return Gate()


@pytest.fixture()
def gated(tmp_path: Path, gate: Gate):
    with Cluster(tmp_path, runner=gate) as c:
        yield c


def status(c: Cluster, name: str = "digits") -> dict[str, Any]:
    return (c.model(name) or {}).get("status") or {}


def job_of(c: Cluster, name: str = "digits") -> dict[str, Any]:
    """The model's Job once it exists: the operator records its intent (status names the
    Job, phase Queued or Compressing) before it creates the Job, so the two race in a test."""
    job_name = status(c, name)["jobName"]
    return c.wait_for(
        f"Job {job_name}",
        lambda: next((j for j in c.objects("batch", "jobs") if j["metadata"]["name"] == job_name), None),
        30,
    )


def test_invalid_spec_gets_a_condition_and_no_job(gated: Cluster) -> None:
    bad = doc(validation={**DOC["spec"]["validation"], "metric": "mse"})
    with running_operator(gated):
        gated.apply_model(bad)
        gated.wait_for(
            "SpecValid=False",
            lambda: any(
                c["type"] == "SpecValid" and c["status"] == "False" for c in status(gated).get("conditions", [])
            ),
        )
        st = status(gated)
        spec_valid = condition(st, "SpecValid")
        assert spec_valid["reason"] == "InvalidSpec"
        # The same words as `modelpress validate`: field path, value and the allowed values.
        assert spec_valid["message"] == format_problems(check_object(bad))
        assert spec_valid["message"].startswith("spec.validation.metric: metric 'mse' does not fit task")
        assert st["observedGeneration"] == 1 and st["phase"] == "Failed"
        events = gated.wait_for("a warning", lambda: gated.events("digits"))
        assert [(e["type"], e["reason"]) for e in events] == [("Warning", "InvalidSpec")]
        assert gated.objects("batch", "jobs") == [] and gated.objects("", "configmaps") == []

        # Fixing the spec starts the Job.
        gated.patch_model("digits", {"spec": {"validation": {"metric": "accuracy"}}})
        gated.wait_phase("digits", "Validated", 30)
        assert condition(status(gated), "SpecValid")["status"] == "True"
        assert len(gated.objects("batch", "jobs")) == 1


def test_recipe_change_starts_a_new_job_serving_change_does_not(gated: Cluster, gate: Gate) -> None:
    with running_operator(gated):
        gated.apply_model(doc())
        first = gated.wait_phase("digits", "Validated", 30)["status"]
        gated.patch_model("digits", {"spec": {"serving": {"enabled": True, "autoscaling": {"maxReplicas": 5}}}})
        gated.wait_for("generation 2", lambda: status(gated).get("observedGeneration") == 2)
        assert [j["metadata"]["name"] for j in gated.objects("batch", "jobs")] == [first["jobName"]]

        gated.patch_model("digits", {"spec": {"compression": {"steps": [{"quantize": {"mode": "fp16"}}]}}})
        gated.wait_for("a second job", lambda: len(gated.objects("batch", "jobs")) == 2)
        second = gated.wait_for(
            "the new recipe validated",
            lambda: (
                (s := status(gated)).get("phase") == "Validated" and s.get("recipeHash") != first["recipeHash"] and s
            ),
        )
        assert second["observedGeneration"] == 3 and second["jobName"] != first["jobName"]
        assert gate.runs == [first["jobName"], second["jobName"]]
        # Serving is enabled now: validated, but Ready waits for the rollout.
        assert condition(second, "Ready")["reason"] == "RolloutPending"
        # Turned off again before any rollout: Ready waits for nothing any more.
        gated.patch_model("digits", {"spec": {"serving": {"enabled": False}}})
        third = gated.wait_for("generation 4", lambda: (s := status(gated)).get("observedGeneration") == 4 and s)
        ready = condition(third, "Ready")
        assert (ready["status"], ready["reason"], third["phase"]) == ("True", "Validated", "Validated")
        assert len(gated.objects("batch", "jobs")) == 2


def test_operator_restart_mid_job_collects_without_duplicates(tmp_path: Path) -> None:
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c:
        with running_operator(c):
            c.apply_model(doc())
            c.wait_for("the job to run", lambda: gate.runs)
            assert status(c)["phase"] == "Compressing"
        gate.event.set()  # the Job finishes while no operator runs
        c.wait_for("the job to finish", lambda: (c.objects("batch", "jobs")[0].get("status") or {}).get("succeeded"))
        with running_operator(c):
            st = c.wait_phase("digits", "Validated", 30)["status"]
        assert len(c.objects("batch", "jobs")) == 1 and gate.runs == [st["jobName"]]
        assert st["results"]["speedup"] == 2.5
        creates = [a for a in c.server.audit if a.verb == "create" and a.resource == "jobs"]
        assert len(creates) == 1


def test_restart_after_status_but_before_job_recreates_it(tmp_path: Path) -> None:
    """A crash between the Compressing status write and the Job create: the next run creates it."""
    gate = Gate()
    with Cluster(tmp_path, runner=gate) as c:
        c.server.faults.append(Fault("create", "jobs", 500, times=100))
        with running_operator(c):
            c.apply_model(doc())
            c.wait_for("Compressing", lambda: status(c).get("phase") == "Compressing")
            c.wait_for("create attempts", lambda: c.server.faults[0].hits >= 6)
        c.server.faults.clear()
        with running_operator(c):
            c.wait_phase("digits", "Validated", 30)
        assert len(c.objects("batch", "jobs")) == 1


def test_api_errors_are_retried(gated: Cluster) -> None:
    gated.server.faults.extend(
        [
            Fault("create", "jobs", 500, times=2),
            Fault("create", "configmaps", 503, times=1),
            Fault("patch", "compressedmodels", 500, times=2, subresource="status"),
            Fault("patch", "compressedmodels", 409, times=1, subresource="status"),
            Fault("list", "pods", 500, times=1),
        ]
    )
    with running_operator(gated):
        gated.apply_model(doc())
        st = gated.wait_phase("digits", "Validated", 60)["status"]
    assert all(f.times == 0 for f in gated.server.faults), gated.server.faults
    # Jobs are watched with a server-side label selector: other Jobs never reach the operator.
    job_reads = [a for a in gated.server.audit if a.verb in ("list", "watch") and a.resource == "jobs"]
    assert job_reads and all(a.label_selector == "modelpress.io/compressedmodel" for a in job_reads)
    assert len(gated.objects("batch", "jobs")) == 1 and st["artifact"]["sizeBytes"] == 1000


def test_delete_removes_owned_objects_and_metrics(gated: Cluster) -> None:
    from prometheus_client import REGISTRY

    labels = {"namespace": "ml", "name": "digits"}
    with running_operator(gated):
        gated.apply_model(doc())
        gated.wait_phase("digits", "Validated", 30)
        assert REGISTRY.get_sample_value("modelpress_model_speedup", labels) == 2.5
        gated.delete_model("digits")
        gated.wait_for("the model to go", lambda: gated.model("digits") is None, 10)
        assert gated.objects("batch", "jobs") == [] and gated.objects("", "configmaps") == []
        gated.wait_for("gauges removed", lambda: REGISTRY.get_sample_value("modelpress_model_speedup", labels) is None)


def test_concurrency_cap_queues_models(tmp_path: Path) -> None:
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c:
        with running_operator(c, max_concurrent_jobs="1"):
            c.apply_model(doc("first"))
            c.wait_for("first running", lambda: gate.runs)
            c.apply_model(doc("second"))
            c.wait_for("second queued", lambda: status(c, "second").get("phase") == "Queued")
            assert condition(status(c, "second"), "Compressed")["reason"] == "Queued"
            assert len(c.objects("batch", "jobs")) == 1
            gate.event.set()
            c.wait_phase("first", "Validated", 30)
            c.wait_phase("second", "Validated", 30)
        assert len(c.objects("batch", "jobs")) == 2


def test_pod_level_failure_reason(tmp_path: Path) -> None:
    async def oom(job: Mapping[str, Any], root: Path) -> ContainerResult:
        return ContainerResult(137, "", "OOMKilled")

    with Cluster(tmp_path, runner=oom) as c:
        with running_operator(c):
            c.apply_model(doc(job={"gpu": 0, "backoffLimit": 1}))
            st = c.wait_phase("digits", "Failed", 30)["status"]
        assert condition(st, "Compressed")["reason"] == "OOMKilled"
        assert condition(st, "Ready")["status"] == "False"
        assert len(c.objects("", "pods")) == 2  # backoffLimit 1: one retry, then no more


def test_watches_resume_from_the_last_resource_version(gated: Cluster) -> None:
    gated.server.watch_limit_s = 0.3
    with running_operator(gated):
        gated.wait_for(
            "a resumed watch",
            lambda: sum(a.verb == "watch" and a.resource == "compressedmodels" for a in gated.server.audit) >= 3,
            30,
        )
        gated.apply_model(doc())  # arrives on a resumed stream, not on the initial one
        gated.wait_phase("digits", "Validated", 30)
        before = sum(a.verb == "watch" and a.resource == "compressedmodels" for a in gated.server.audit)
        gated.wait_for(
            "more resumed watches",
            lambda: (
                sum(a.verb == "watch" and a.resource == "compressedmodels" for a in gated.server.audit) >= before + 2
            ),
            30,
        )
    model_reads = [a for a in gated.server.audit if a.resource == "compressedmodels" and a.verb in ("list", "watch")]
    assert [a.verb for a in model_reads].count("list") == 1
    versions = [int(a.resource_version) for a in model_reads if a.verb == "watch"]
    # Each watch resumes where the last one ended: never older, and past the model's events at the end.
    assert versions == sorted(versions) and versions[-1] > versions[0]


def test_collection_lost_to_api_errors_is_retried_on_the_next_event(gated: Cluster) -> None:
    gated.server.faults.append(Fault("list", "pods", 500, times=6))  # more than the client retries
    with running_operator(gated):
        gated.apply_model(doc())
        gated.wait_for("the failed collection", lambda: gated.server.faults[0].times == 0, 30)
        assert status(gated)["phase"] == "Compressing"
        gated.patch_model("digits", {"metadata": {"labels": {"team": "search"}}})  # any event of the model
        st = gated.wait_phase("digits", "Validated", 30)["status"]
    assert st["results"]["speedup"] == 2.5 and len(gated.objects("batch", "jobs")) == 1


def _patch(c: Cluster, plural: str, name: str, patch: dict[str, Any], subresource: str = "") -> None:
    """A write by another controller: Kueue (a Job's spec.suspend) or the kubelet (a pod's status)."""
    group = "batch" if plural == "jobs" else ""
    c.sync(c.server.patch, group, plural, c.namespace, name, subresource, patch, "application/merge-patch+json")


def test_kueue_suspended_job_shows_queued_until_admitted(tmp_path: Path) -> None:
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c:
        with running_operator(c):
            c.apply_model(doc(job={"gpu": 0, "queueName": "gpus"}))
            st = c.wait_phase("digits", "Queued", 30)["status"]
            job = job_of(c)
            assert len(c.objects("batch", "jobs")) == 1
            assert job["spec"]["suspend"] is True and st["jobName"] == job["metadata"]["name"]
            compressed = condition(st, "Compressed")
            assert compressed["reason"] == "WaitingForKueue" and "LocalQueue gpus" in compressed["message"]
            assert condition(st, "Ready")["reason"] == "Queued"
            # Later model events keep it Queued and create nothing more.
            c.patch_model("digits", {"metadata": {"labels": {"team": "search"}}})
            c.wait_for("an event handled", lambda: status(c).get("observedGeneration") == 1)
            assert status(c)["phase"] == "Queued" and gate.runs == [] and c.objects("", "pods") == []

            _patch(c, "jobs", job["metadata"]["name"], {"spec": {"suspend": False}})  # Kueue admits it
            st = c.wait_phase("digits", "Compressing", 30)["status"]
            assert condition(st, "Compressed")["reason"] == "JobRunning"
            c.wait_for("the job to run", lambda: gate.runs)
            gate.event.set()
            st = c.wait_phase("digits", "Validated", 30)["status"]
        assert len(c.objects("batch", "jobs")) == 1 and st["results"]["speedup"] == 2.5


def test_stuck_image_pull_is_reported_before_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    monkeypatch.setenv("MODELPRESS_POD_CHECK_SECONDS", "0.1")
    errors_before = REGISTRY.get_sample_value("modelpress_reconcile_errors_total", {"handler": "pods"}) or 0
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c:
        with running_operator(c):
            c.apply_model(doc(job={"gpu": 0, "image": "registry.example/modelpress:nope"}))
            (pod,) = c.wait_for("the pod", lambda: c.objects("", "pods"))
            # A check that fails past the client's retries is counted; the next one goes on.
            c.server.faults.append(Fault("list", "pods", 500, times=6))
            c.wait_for("the failed check", lambda: c.server.faults[0].times == 0, 30)
            waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.example/..."'}
            container = {"name": "compress", "ready": False, "restartCount": 0, "state": {"waiting": waiting}}
            _patch(c, "pods", pod["metadata"]["name"], {"status": {"containerStatuses": [container]}}, "status")
            reported = c.wait_for(
                "the stuck pod reported", lambda: condition(status(c), "Compressed")["reason"] == "ImagePullBackOff"
            )
            st = status(c)
            message = condition(st, "Compressed")["message"]
            assert reported and st["phase"] == "Compressing"
            assert pod["metadata"]["name"] in message and "registry.example/modelpress:nope" in message
            assert "Back-off pulling image" in message and condition(st, "Ready")["reason"] == "ImagePullBackOff"
            events = c.wait_for("a warning", lambda: c.events("digits"))
            assert [(e["type"], e["reason"]) for e in events] == [("Warning", "ImagePullBackOff")]

            container["state"] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}  # the pull succeeded
            _patch(c, "pods", pod["metadata"]["name"], {"status": {"containerStatuses": [container]}}, "status")
            c.wait_for("cleared", lambda: condition(status(c), "Compressed")["reason"] == "JobRunning")
            assert len(c.events("digits")) == 1  # one Warning, not one per check
            gate.event.set()
            c.wait_phase("digits", "Validated", 30)
    assert REGISTRY.get_sample_value("modelpress_reconcile_errors_total", {"handler": "pods"}) == errors_before + 1


def test_kueue_suspended_job_does_not_fill_the_concurrency_cap(tmp_path: Path) -> None:
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c:
        with running_operator(c, max_concurrent_jobs="1"):
            c.apply_model(doc("first", job={"gpu": 0, "queueName": "gpus"}))
            c.wait_phase("first", "Queued", 30)
            job_of(c, "first")
            # The suspended Job waits for Kueue and runs nothing: the cap's one slot stays free.
            c.apply_model(doc("second"))
            second = c.wait_phase("second", "Compressing", 30)["status"]
            assert condition(second, "Compressed")["reason"] == "JobRunning"
            c.wait_for("second running", lambda: gate.runs == [second["jobName"]])
            assert condition(status(c, "first"), "Compressed")["reason"] == "WaitingForKueue"
            assert len(c.objects("batch", "jobs")) == 2
            # A running Job still fills it.
            c.apply_model(doc("third"))
            c.wait_for("third queued", lambda: status(c, "third").get("phase") == "Queued")
            assert condition(status(c, "third"), "Compressed")["reason"] == "Queued"
            assert len(c.objects("batch", "jobs")) == 2
            gate.event.set()
            c.wait_phase("second", "Validated", 30)
            c.wait_phase("third", "Validated", 30)
            assert status(c, "first")["phase"] == "Queued"  # still Kueue's to admit
        assert len(c.objects("batch", "jobs")) == 3


def test_job_preempted_by_kueue_frees_its_slot_under_the_cap(tmp_path: Path) -> None:
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c:
        with running_operator(c, max_concurrent_jobs="1"):
            c.apply_model(doc("first", job={"gpu": 0, "queueName": "gpus"}))
            first = c.wait_phase("first", "Queued", 30)["status"]
            job_of(c, "first")
            _patch(c, "jobs", first["jobName"], {"spec": {"suspend": False}})  # Kueue admits it
            c.wait_phase("first", "Compressing", 30)
            c.wait_for("first running", lambda: gate.runs == [first["jobName"]])
            c.apply_model(doc("second"))
            c.wait_for("second queued", lambda: status(c, "second").get("phase") == "Queued")
            assert condition(status(c, "second"), "Compressed")["reason"] == "Queued"

            _patch(c, "jobs", first["jobName"], {"spec": {"suspend": True}})  # Kueue preempts it
            st = c.wait_phase("first", "Queued", 30)["status"]
            assert condition(st, "Compressed")["reason"] == "WaitingForKueue"
            second = c.wait_phase("second", "Compressing", 30)["status"]
            c.wait_for("second running", lambda: second["jobName"] in gate.runs)
            gate.event.set()
            c.wait_phase("second", "Validated", 30)


def test_unschedulable_pod_is_reported_until_it_schedules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_POD_CHECK_SECONDS", "0.1")
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c:
        with running_operator(c):
            c.apply_model(doc(job={"gpu": 1}))
            (pod,) = c.wait_for("the pod", lambda: c.objects("", "pods"))
            scheduler = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
            unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduler}
            _patch(c, "pods", pod["metadata"]["name"], {"status": {"conditions": [unschedulable]}}, "status")
            c.wait_for("reported", lambda: condition(status(c), "Compressed")["reason"] == "Unschedulable")
            st = status(c)
            message = condition(st, "Compressed")["message"]
            assert st["phase"] == "Compressing" and condition(st, "Ready")["reason"] == "Unschedulable"
            assert pod["metadata"]["name"] in message and scheduler in message and "spec.job.tolerations" in message
            events = c.wait_for("a warning", lambda: c.events("digits"))
            assert [(e["type"], e["reason"]) for e in events] == [("Warning", "Unschedulable")]

            scheduled = {"type": "PodScheduled", "status": "True"}  # the autoscaler added a GPU node
            _patch(c, "pods", pod["metadata"]["name"], {"status": {"conditions": [scheduled]}}, "status")
            c.wait_for("cleared", lambda: condition(status(c), "Compressed")["reason"] == "JobRunning")
            assert len(c.events("digits")) == 1  # one Warning, not one per check
            gate.event.set()
            c.wait_phase("digits", "Validated", 30)
