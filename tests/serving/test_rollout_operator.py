"""The rollout end to end through the operator: kopf (handlers + rollout_handlers) against
the API-server stand-in of tests/operator, real modelpress-onnx ModelServers (stable fp32,
canary int8), a real Prometheus scraping them, and a router thread that plays KServe: it
reads the InferenceService's traffic split from the stand-in and sends load accordingly.
The compression Job "runs" instantly with a summary naming the real canary artifact."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster import Cluster, ContainerResult, operator_env
from helpers import condition
from kopf.testing import KopfRunner

from modelpress import api
from modelpress.jobs.serving import find_model_file
from modelpress.summary import JobSummary

NS = "ml"
STABLE_URI = "s3://models/digits-fp32/"
ISVC = ("serving.kserve.io", "inferenceservices")
MODULES = ["-m", "modelpress.operator.handlers", "-m", "modelpress.operator.rollout_handlers"]


def model_doc(prometheus_url: str, **rollout: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "digits", "namespace": NS},
        "spec": {
            "source": {"storageUri": "s3://models/digits.onnx", "format": "onnx", "task": "classification"},
            "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
            "validation": {"dataset": {"storageUri": "s3://models/val.npz", "format": "npz"},
                           "metric": "accuracy", "maxAccuracyDrop": {"absolute": 0.02}},
            "job": {"gpu": 0},
            "output": {"storageUri": "s3://models/out/"},
            "serving": {
                "deploymentMode": "Standard",
                "rollout": {
                    "steps": [30, 60], "interval": "5s",
                    "analysis": {"prometheusUrl": prometheus_url, "minRequests": 10, "maxLatencyRatio": 10.0,
                                 "failureLimit": 2},
                    **rollout,
                },
            },
        },
    }  # fmt: skip


def instant_job(canary_dir: Path):
    """The kubelet stand-in's runner: the Job validates and names the real int8 artifact."""
    data = find_model_file(canary_dir).read_bytes()

    async def run(job: Mapping[str, Any], root: Path) -> ContainerResult:
        rh = job["metadata"]["labels"]["modelpress.io/recipe-hash"]
        summary = JobSummary(
            outcome="Validated", reason="met every threshold", recipeHash=rh,
            artifact={"storageUri": f"s3://models/out/{rh}/", "sha256": hashlib.sha256(data).hexdigest(),
                      "sizeBytes": len(data)},
            results={"passed": True, "metric": "accuracy", "accuracyDrop": 0.0, "speedup": 1.5, "sizeRatio": 0.3},
        )  # fmt: skip
        return ContainerResult(0, summary.to_termination_message(), "Completed")

    return run


def declare_isvc(c: Cluster) -> None:
    """KServe's InferenceService kind exists in the API server stand-in."""
    c.sync(c.server.declare, ISVC[0], "v1beta1", ISVC[1], "InferenceService")


def add_users_isvc(c: Cluster) -> None:
    """The kind, plus the InferenceService a user made before ModelPress (:func:`existing_isvc`)."""
    declare_isvc(c)
    c.sync(c.server.create, ISVC[0], ISVC[1], NS, existing_isvc(), "v1beta1")


def existing_isvc() -> dict[str, Any]:
    """What a user created before ModelPress: the fp32 model, no owner."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "digits", "namespace": NS},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "runtime": "modelpress-onnx",
                                         "storageUri": STABLE_URI}}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


class Router(threading.Thread):
    """Plays KServe's traffic split: per request, read the split and pick a side."""

    def __init__(self, c: Cluster, servers: dict[str, Any], x: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.c, self.servers, self.x = c, servers, x
        self.stop = threading.Event()
        self.seen: list[tuple[str, int]] = []  # (canary uri or "", percent) whenever it changes

    def split(self) -> tuple[str, str | None, int]:
        isvc = next(iter(self.c.objects(*ISVC)), None) or {}
        spec = isvc.get("spec") or {}
        stable = spec["predictor"]["model"]["storageUri"]
        canary = (spec.get("canary") or [None])[0]
        if canary is None:
            return stable, None, 0
        return stable, canary["predictor"]["model"]["storageUri"], canary["trafficPercent"]

    def run(self) -> None:
        conns: dict[str, http.client.HTTPConnection] = {}
        i = 0
        while not self.stop.is_set():
            if i % 20 == 0:
                stable, canary, percent = self.split()
                if not self.seen or self.seen[-1] != (canary or "", percent):
                    self.seen.append((canary or "", percent))
            uri = canary if canary and (i + 1) * percent // 100 > i * percent // 100 else stable
            server = self.servers["stable" if uri == STABLE_URI else "canary"]
            conn = conns.setdefault(uri, http.client.HTTPConnection("127.0.0.1", server.port, timeout=10))
            body = json.dumps({"instances": self.x[i % len(self.x) : i % len(self.x) + 1].tolist()})
            conn.request("POST", "/v1/models/digits:predict", body, {"Content-Type": "application/json"})
            conn.getresponse().read()
            i += 1


@pytest.fixture
def world(tmp_path, digits_models, start_server, start_prometheus, monkeypatch) -> Iterator[dict[str, Any]]:
    """Servers + Prometheus + the stand-in with an existing InferenceService, and a router."""
    monkeypatch.setenv("MODELPRESS_ROLLOUT_TICK_SECONDS", "1")
    yield {"tmp": tmp_path, "models": digits_models, "start_server": start_server, "start_prometheus": start_prometheus}


def run_rollout(world: dict[str, Any], chaos: dict[str, str] | None, until: set[str], **rollout: Any):
    models = world["models"]
    stable = world["start_server"](models["fp32"])
    canary = world["start_server"](models["int8"], chaos)
    # Both in the model's namespace, as kubernetes_sd relabelling labels a pod's series.
    prom = world["start_prometheus"]([stable, canary], namespaces=[NS, NS])
    x = np.load(models["val"])["x"]
    with Cluster(world["tmp"], runner=instant_job(models["int8"]), namespace=NS) as c:
        add_users_isvc(c)
        router = Router(c, {"stable": stable, "canary": canary}, x)
        router.start()
        try:
            with operator_env(c), KopfRunner(["run", "--standalone", "--namespace", NS, *MODULES], timeout=60):
                c.apply_model(model_doc(prom.url, **rollout))
                final = c.wait_phase("digits", until, timeout=90)
        finally:
            router.stop.set()
            router.join(15)
        return final, c.objects(*ISVC)[0], c.events("digits"), router.seen


def test_good_canary_is_stepped_through_and_promoted(world):
    final, isvc, events, seen = run_rollout(world, None, {"Serving", "RolledBack"})
    rollout = final["status"]["rollout"]
    canary_uri = final["status"]["artifact"]["storageUri"]
    assert final["status"]["phase"] == "Serving", rollout
    assert [h["event"] for h in rollout["history"]] == ["Started", "StepAdvanced", "Promoted"]
    assert [s for s in seen if s[0]] == [(canary_uri, 30), (canary_uri, 60)]  # every step, in order, once
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == canary_uri and not isvc["spec"].get("canary")
    assert "ownerReferences" not in isvc["metadata"]  # the user's InferenceService stays the user's
    assert rollout["lastAnalysis"]["verdict"] == "Pass"
    assert {"Started", "StepAdvanced", "Promoted"} <= {e["reason"] for e in events}
    ready = next(cond for cond in final["status"]["conditions"] if cond["type"] == "Ready")
    assert ready["status"] == "True"


def test_bad_canary_is_rolled_back_with_the_failed_check_named(world):
    final, isvc, events, seen = run_rollout(world, {"MODELPRESS_CHAOS_ERROR_RATE": "0.5"}, {"Serving", "RolledBack"})
    rollout = final["status"]["rollout"]
    assert final["status"]["phase"] == "RolledBack", rollout
    assert rollout["failures"] == 2 and rollout["history"][-1]["event"] == "RolledBack"
    assert [s[1] for s in seen if s[0]] == [30]  # never went past the first step
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI and not isvc["spec"].get("canary")
    warning = next(e for e in events if e["reason"] == "RolledBack")
    assert warning["type"] == "Warning" and "error rate" in warning["message"]
    ready = next(cond for cond in final["status"]["conditions"] if cond["type"] == "Ready")
    assert ready["status"] == "False" and "error rate" in ready["message"]


# ---------------------------------------------------------------- without traffic: holds and bad input


@pytest.fixture
def quick_ticks(monkeypatch) -> None:
    monkeypatch.setenv("MODELPRESS_ROLLOUT_TICK_SECONDS", "1")


def rollout_of(c: Cluster) -> dict[str, Any]:
    return ((c.model("digits") or {}).get("status") or {}).get("rollout") or {}


def canary_split(c: Cluster) -> tuple[str | None, int | None]:
    spec = (next(iter(c.objects(*ISVC)), None) or {}).get("spec") or {}
    canary = (spec.get("canary") or [None])[0]
    return (canary["predictor"]["model"]["storageUri"], canary["trafficPercent"]) if canary else (None, None)


def operator(c: Cluster):
    return KopfRunner(["run", "--standalone", "--namespace", NS, *MODULES], timeout=60)


def test_unreachable_prometheus_holds_pause_and_operator_restart_repeat_nothing(
    tmp_path, digits_models, quick_ticks, unused_port
):
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        add_users_isvc(c)
        doc = model_doc(f"http://127.0.0.1:{unused_port}", interval="2s")
        with operator_env(c), operator(c):
            c.apply_model(doc)
            c.wait_for(
                "two inconclusive analyses",
                lambda: sum(e["reason"] == "AnalysisInconclusive" for e in c.events("digits")) >= 2,
            )
        held = c.model("digits")["status"]
        assert held["phase"] == "RollingOut"
        assert held["rollout"]["lastAnalysis"]["verdict"] == "Inconclusive"
        assert "unreachable" in held["rollout"]["lastAnalysis"]["message"]
        ready = next(cond for cond in held["conditions"] if cond["type"] == "Ready")
        assert ready["status"] == "False" and "unreachable" in ready["message"]
        artifact = held["artifact"]["storageUri"]
        assert canary_split(c) == (artifact, 30)

        # Operator restarted, paused meanwhile: it resumes from status, changes nothing.
        c.patch_model("digits", {"spec": {"serving": {"rollout": {"paused": True}}}})
        before = rollout_of(c)
        with operator_env(c), operator(c):
            time.sleep(6)  # three intervals, six ticks
        after = rollout_of(c)
        assert after["history"] == before["history"]  # no second Started, no step change
        assert after["lastAnalysis"] == before["lastAnalysis"]  # paused: no analysis ran
        assert canary_split(c) == (artifact, 30)


def test_new_artifact_mid_rollout_restarts_from_the_first_step(tmp_path, digits_models, quick_ticks, unused_port):
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        add_users_isvc(c)
        with operator_env(c), operator(c):
            c.apply_model(model_doc(f"http://127.0.0.1:{unused_port}"))
            c.wait_for("the first canary", lambda: canary_split(c)[0])
            first = canary_split(c)[0]
            # A new recipe: a new Job, a new artifact while the first canary is in flight.
            c.patch_model(
                "digits", {"spec": {"compression": {"steps": [{"quantize": {"mode": "dynamic", "perChannel": True}}]}}}
            )
            c.wait_for("the new canary", lambda: canary_split(c)[0] not in (None, first))
            c.wait_for("the restart in history", lambda: rollout_of(c)["history"][-1]["event"] == "Restarted")
        rollout = rollout_of(c)
        assert canary_split(c) == (rollout["canaryStorageUri"], 30)
        assert rollout["stableStorageUri"] == STABLE_URI and rollout["step"] == 0
        assert c.objects(*ISVC)[0]["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI


def test_missing_inference_service_with_baseline_previous_is_reported(
    tmp_path, digits_models, quick_ticks, unused_port
):
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        declare_isvc(c)
        with operator_env(c), operator(c):
            c.apply_model(model_doc(f"http://127.0.0.1:{unused_port}"))
            c.wait_for(
                "the BaselineMissing event", lambda: any(e["reason"] == "BaselineMissing" for e in c.events("digits"))
            )
        status = c.model("digits")["status"]
        ready = next(cond for cond in status["conditions"] if cond["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "BaselineMissing")
        assert "baseline: source" in ready["message"]
        assert status["phase"] == "Validated" and not c.objects(*ISVC)  # nothing created blind


def test_baseline_source_creates_an_owned_inference_service_then_canaries(
    tmp_path, digits_models, quick_ticks, unused_port
):
    """No InferenceService yet, ``baseline: source``: ModelPress creates it (owned) serving
    the uncompressed source, then puts the compressed artifact in as the canary."""
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        declare_isvc(c)
        with operator_env(c), operator(c):
            applied = c.apply_model(model_doc(f"http://127.0.0.1:{unused_port}", baseline="source"))
            c.wait_for("the canary against the source", lambda: canary_split(c)[0])
        isvc = c.objects(*ISVC)[0]
        source = applied["spec"]["source"]["storageUri"]
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == source
        assert canary_split(c) == (c.model("digits")["status"]["artifact"]["storageUri"], 30)
        assert isvc["metadata"]["ownerReferences"][0]["uid"] == applied["metadata"]["uid"]
        assert [h["event"] for h in rollout_of(c)["history"]] == ["BaselineServed", "Started"]


def test_knative_mode_canary_percent_and_immediate_strategy(tmp_path, digits_models, quick_ticks, unused_port):
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        add_users_isvc(c)
        doc = model_doc(f"http://127.0.0.1:{unused_port}")
        doc["spec"]["serving"]["deploymentMode"] = "Knative"

        def predictor() -> dict[str, Any]:
            return c.objects(*ISVC)[0]["spec"]["predictor"]

        with operator_env(c), operator(c):
            c.apply_model(doc)
            c.wait_for("the Knative canary", lambda: predictor().get("canaryTrafficPercent"))
            artifact = c.model("digits")["status"]["artifact"]["storageUri"]
            assert (predictor()["model"]["storageUri"], predictor()["canaryTrafficPercent"]) == (artifact, 30)
            assert c.objects(*ISVC)[0]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
            # Switch to immediate: the artifact takes all traffic at once, but the model is
            # only Serving once KServe reports the InferenceService Ready for that change.
            c.kserve.ready = False
            c.patch_model("digits", {"spec": {"serving": {"rollout": {"strategy": "immediate"}}}})
            c.wait_for("the canary percent removed", lambda: "canaryTrafficPercent" not in predictor())
            time.sleep(4)  # several 1 s rollout ticks with KServe not ready
            assert c.model("digits")["status"]["phase"] == "RollingOut"
            c.kserve.ready = True
            c.sync(c.kserve.mark_ready, NS, "digits")
            c.wait_phase("digits", "Serving", timeout=30)
        assert predictor()["model"]["storageUri"] == artifact


# ---------------------------------------------------------------- serving changes after the rollout


def test_serving_change_reaches_a_settled_inference_service_and_disabling_serving_deletes_it(
    tmp_path, digits_models, quick_ticks, unused_port
):
    """An owned InferenceService (strategy immediate, none there before): a later
    autoscaling change is applied to it although the rollout is settled; turning serving
    off deletes it and the model is Validated again, Ready as without serving."""
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        declare_isvc(c)
        doc = model_doc(f"http://127.0.0.1:{unused_port}", strategy="immediate")
        with operator_env(c), operator(c):
            applied = c.apply_model(doc)
            c.wait_phase("digits", "Serving", timeout=60)
            [isvc] = c.objects(*ISVC)
            assert isvc["metadata"]["ownerReferences"][0]["uid"] == applied["metadata"]["uid"]
            assert isvc["spec"]["predictor"]["scaleMetric"] == "concurrency"

            query = 'sum(rate(modelpress_inference_requests_total{model="digits"}[1m]))'
            metrics = [{"prometheus": {"query": query, "target": 100}}]
            c.patch_model("digits", {"spec": {"serving": {"autoscaling": {"metrics": metrics}}}})
            c.wait_for("KEDA autoscaling", lambda: "autoScaling" in c.objects(*ISVC)[0]["spec"]["predictor"])
            [isvc] = c.objects(*ISVC)
            predictor = isvc["spec"]["predictor"]
            assert predictor["autoScaling"]["metrics"][0]["external"]["metric"]["query"] == query
            assert not {"scaleMetric", "scaleTarget"} & predictor.keys()  # one way to scale, not two
            assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
            assert predictor["model"]["storageUri"] == c.model("digits")["status"]["artifact"]["storageUri"]

            c.patch_model("digits", {"spec": {"serving": {"enabled": False}}})
            c.wait_for("the InferenceService deleted", lambda: not c.objects(*ISVC))
            final = c.wait_phase("digits", "Validated", timeout=30)
            time.sleep(2)  # two more ticks: nothing further happens
        status = c.model("digits")["status"]
        assert status == final["status"] and "rollout" not in status
        ready = condition(status, "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "Validated")
        assert condition(status, "RolledOut")["status"] == "False"
        removed = [e for e in c.events("digits") if e["reason"] == "ServingRemoved"]
        assert len(removed) == 1 and removed[0]["message"].endswith(f"InferenceService {NS}/digits deleted")


def test_disabling_serving_leaves_a_users_inference_service_alone_and_says_so_once(
    tmp_path, digits_models, quick_ticks, unused_port
):
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        add_users_isvc(c)
        with operator_env(c), operator(c):
            c.apply_model(model_doc(f"http://127.0.0.1:{unused_port}"))
            c.wait_for("the canary", lambda: canary_split(c)[0])
            before = c.objects(*ISVC)[0]
            patches = sum(a.verb == "patch" and a.resource == ISVC[1] for a in c.server.audit)
            time.sleep(2.5)  # ticks that hold the canary (Prometheus unreachable) leave the InferenceService be
            assert sum(a.verb == "patch" and a.resource == ISVC[1] for a in c.server.audit) == patches
            c.patch_model("digits", {"spec": {"serving": None}})  # serving removed altogether
            c.wait_for("the event", lambda: any(e["reason"] == "ServingReleased" for e in c.events("digits")))
            time.sleep(3)  # three more ticks
        [after] = c.objects(*ISVC)
        # Not deleted, not patched (KServe's stand-in may still have written its status).
        assert (after["spec"], after["metadata"]["generation"]) == (before["spec"], before["metadata"]["generation"])
        released = [e for e in c.events("digits") if e["reason"] == "ServingReleased"]
        assert len(released) == 1 and "not created by ModelPress" in released[0]["message"]
        assert not any(e["reason"] == "ServingRemoved" for e in c.events("digits"))
        status = c.model("digits")["status"]
        assert status["phase"] == "Validated" and "rollout" not in status
        assert condition(status, "Ready")["status"] == "True"


def test_keda_metric_without_any_prometheus_is_reported_not_rolled_out(tmp_path, digits_models, quick_ticks):
    """No serverAddress, no analysis prometheusUrl, no operator setting: nothing to build;
    the model says which field to set (once), and setting it rolls out with KEDA."""
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        declare_isvc(c)
        doc = model_doc("http://unused:9090", strategy="immediate")
        del doc["spec"]["serving"]["rollout"]["analysis"]["prometheusUrl"]
        metric = {"query": "sum(rate(modelpress_inference_requests_total[1m]))", "target": 50}
        doc["spec"]["serving"]["autoscaling"] = {"metrics": [{"prometheus": metric}]}
        with operator_env(c, prometheus_url=""), operator(c):
            c.apply_model(doc)
            c.wait_for("the complaint", lambda: any(e["reason"] == "ServingConfigInvalid" for e in c.events("digits")))
            time.sleep(2)  # two more ticks: no second Event, nothing created
            status = c.model("digits")["status"]
            ready = condition(status, "Ready")
            assert (ready["status"], ready["reason"]) == ("False", "ServingConfigInvalid")
            assert "prometheus.serverAddress" in ready["message"]
            assert status["phase"] == "Validated" and "rollout" not in status and not c.objects(*ISVC)
            assert sum(e["reason"] == "ServingConfigInvalid" for e in c.events("digits")) == 1

            address = "http://prometheus.monitoring:9090"
            c.patch_model(
                "digits",
                {
                    "spec": {
                        "serving": {"autoscaling": {"metrics": [{"prometheus": {**metric, "serverAddress": address}}]}}
                    }
                },
            )
            c.wait_phase("digits", "Serving", timeout=30)
        [isvc] = c.objects(*ISVC)
        [external] = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
        assert external["external"]["metric"]["serverAddress"] == address
        assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"


def test_a_fixed_serving_config_clears_the_complaint_on_a_settled_model(tmp_path, digits_models, quick_ticks):
    """Serving, then a KEDA metric with no Prometheus anywhere (the complaint, the old
    InferenceService kept), then the fix: the InferenceService gets KEDA and the
    conditions say Serving again instead of keeping the complaint for good."""
    with Cluster(tmp_path, runner=instant_job(digits_models["int8"]), namespace=NS) as c:
        declare_isvc(c)
        doc = model_doc("http://unused:9090", strategy="immediate")
        del doc["spec"]["serving"]["rollout"]["analysis"]["prometheusUrl"]
        with operator_env(c, prometheus_url=""), operator(c):
            c.apply_model(doc)
            c.wait_phase("digits", "Serving", timeout=60)
            metric = {"query": "sum(rate(modelpress_inference_requests_total[1m]))", "target": 50}
            c.patch_model("digits", {"spec": {"serving": {"autoscaling": {"metrics": [{"prometheus": metric}]}}}})
            c.wait_for("the complaint", lambda: any(e["reason"] == "ServingConfigInvalid" for e in c.events("digits")))
            assert condition(c.model("digits")["status"], "RolledOut")["reason"] == "ServingConfigInvalid"
            assert "autoScaling" not in c.objects(*ISVC)[0]["spec"]["predictor"]

            fixed = {**metric, "serverAddress": "http://prometheus.monitoring:9090"}
            c.patch_model("digits", {"spec": {"serving": {"autoscaling": {"metrics": [{"prometheus": fixed}]}}}})
            c.wait_for(
                "the complaint cleared",
                lambda: condition(c.model("digits")["status"], "RolledOut")["reason"] != "ServingConfigInvalid",
            )
            status = c.model("digits")["status"]
            assert status["phase"] == "Serving"
            for type_ in ("Ready", "RolledOut"):
                cond = condition(status, type_)
                assert (cond["status"], cond["reason"]) == ("True", "Serving"), cond
                assert cond["message"] == f"serving {status['artifact']['storageUri']}"
            [isvc] = c.objects(*ISVC)
            assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"

            # No metrics any more: back to KServe's default autoscaler on metric/target.
            c.patch_model("digits", {"spec": {"serving": {"autoscaling": {"metrics": []}}}})
            c.wait_for("scaleMetric back", lambda: "scaleMetric" in c.objects(*ISVC)[0]["spec"]["predictor"])
        [isvc] = c.objects(*ISVC)
        assert "serving.kserve.io/autoscalerClass" not in isvc["metadata"]["annotations"]
        assert "autoScaling" not in isvc["spec"]["predictor"]
        assert isvc["spec"]["predictor"]["scaleMetric"] == "concurrency"
