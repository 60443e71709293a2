"""The shadow stage end to end through the operator: kopf (handlers + rollout_handlers)
against the API-server stand-in of tests/operator, real modelpress-onnx ModelServers and a
real Prometheus.

A router thread plays KServe, shadowing included: it reads the InferenceService and runs
one ModelServer per distinct predictor, started *from the predictor spec* (storageUri, or
storageUris mounted by mountPath, and model.args with the ``--shadow_*`` flags, the
storage URIs mapped to local artifact dirs), then sends each request to the stable or the
canary predictor by the traffic split. Prometheus discovers the servers as they start
(file_sd). A damaged candidate (int8 calibrated on zeros) is stopped in shadow with the
agreement numbers and never gets a user request; a good one (dynamic int8) passes shadow
and the canary and is Serving."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster import Cluster, operator_env
from helpers import condition, free_port, wait_http
from kopf.testing import KopfRunner

from modelpress import api

from .conftest import Prometheus, stop_process
from .test_rollout_operator import existing_isvc, instant_job

NS = "ml"
STABLE_URI = "s3://models/digits-fp32/"
OUT_URI = "s3://models/out/"
ISVC = ("serving.kserve.io", "inferenceservices")
MODULES = ["-m", "modelpress.operator.handlers", "-m", "modelpress.operator.rollout_handlers"]
DEFAULT_MOUNT = "/mnt/models"  # KServe's storage initializer target, the runtime's --model_dir


def model_doc(prometheus_url: str) -> dict[str, Any]:
    """Short intervals, few samples: the stages take seconds. sampleFraction 1: every request is compared."""
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
            "output": {"storageUri": OUT_URI},
            "serving": {
                "deploymentMode": "Standard",
                "rollout": {
                    "steps": [50], "interval": "2s",
                    "analysis": {"prometheusUrl": prometheus_url, "minRequests": 10, "maxLatencyRatio": 10.0},
                    # The damaged candidate agrees ~60%; the good one ~99.7% on these inputs.
                    "shadow": {"sampleFraction": 1.0, "minSamples": 100, "duration": "3s", "minAgreement": 0.97,
                               "maxQueuedRequests": 256},
                },
            },
        },
    }  # fmt: skip


class Predictor:
    """One modelpress-onnx process for one predictor spec, as KServe would run its pods."""

    def __init__(self, predictor: Mapping[str, Any], local: Mapping[str, Path], workdir: Path) -> None:
        model = predictor.get("model") or {}
        if model.get("storageUri"):
            mounts = {DEFAULT_MOUNT: local_dir(model["storageUri"], local)}
        else:
            mounts = {s.get("mountPath", DEFAULT_MOUNT): local_dir(s["uri"], local) for s in predictor["storageUris"]}
        args = [self.mapped(a, mounts) for a in model.get("args") or []]
        self.shadowing = any(a.startswith("--shadow_model_dir") for a in args)
        self.port = free_port()
        self.log = workdir / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelpress.jobs.serving", "--model_dir", str(mounts[DEFAULT_MOUNT]),
             "--model_name", "digits", "--http_port", str(self.port), "--intra_op_threads", "1",
             "--enable_latency_logging", "false", "--enable_grpc", "false", *args],
            env=dict(os.environ), stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{self.port}/v2/models/digits/ready", proc=self.proc, log=self.log)
        except Exception:
            self.stop()
            raise

    @staticmethod
    def mapped(arg: str, mounts: Mapping[str, Path]) -> str:
        """A flag naming a mount path names the local dir mounted there instead."""
        for mount, path in mounts.items():
            if arg.endswith("=" + mount):
                return arg.removesuffix(mount) + str(path)
        return arg

    def stop(self) -> None:
        stop_process(self.proc)


def local_dir(uri: str, local: Mapping[str, Path]) -> Path:
    """The storage initializer's part: a storage URI -> the artifact dir it stands for."""
    return next(path for prefix, path in local.items() if uri.startswith(prefix))


def predictor_key(predictor: Mapping[str, Any]) -> str:
    """What makes KServe roll new pods: the model's storage and args."""
    model = predictor.get("model") or {}
    return json.dumps([model.get("storageUri"), predictor.get("storageUris"), model.get("args")], sort_keys=True)


class Router(threading.Thread):
    """Plays KServe: one ModelServer per predictor spec, started when the InferenceService
    first asks for it, and the traffic split between the stable and the canary predictor."""

    def __init__(self, c: Cluster, prom: Prometheus, local: Mapping[str, Path], x: np.ndarray, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.c, self.prom, self.local, self.x, self.workdir = c, prom, local, x, workdir
        self.stop = threading.Event()
        self.servers: dict[str, Predictor] = {}
        self.sent: dict[str, int] = {}  # predictor key -> requests sent
        self.error: BaseException | None = None

    def server(self, predictor: Mapping[str, Any]) -> Predictor:
        key = predictor_key(predictor)
        if key not in self.servers:
            self.servers[key] = Predictor(predictor, self.local, self.workdir)
            self.prom.set_targets(
                [f"127.0.0.1:{s.port}" for s in self.servers.values()], [{"namespace": NS}] * len(self.servers)
            )
        return self.servers[key]

    def split(self) -> tuple[Predictor, Predictor | None, int]:
        spec = self.c.objects(*ISVC)[0]["spec"]
        canary = (spec.get("canary") or [None])[0]
        if canary is None:
            return self.server(spec["predictor"]), None, 0
        return self.server(spec["predictor"]), self.server(canary["predictor"]), canary["trafficPercent"]

    def run(self) -> None:
        conns: dict[int, http.client.HTTPConnection] = {}
        i = 0
        try:
            while not self.stop.is_set():
                if i % 20 == 0:
                    stable, canary, percent = self.split()
                to_canary = canary is not None and (i + 1) * percent // 100 > i * percent // 100
                server = canary if to_canary and canary is not None else stable
                conn = conns.setdefault(server.port, http.client.HTTPConnection("127.0.0.1", server.port, timeout=10))
                body = json.dumps({"instances": self.x[i % len(self.x) : i % len(self.x) + 1].tolist()})
                conn.request("POST", "/v1/models/digits:predict", body, {"Content-Type": "application/json"})
                conn.getresponse().read()
                key = next(k for k, s in self.servers.items() if s is server)
                self.sent[key] = self.sent.get(key, 0) + 1
                i += 1
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.join(15)
        for server in self.servers.values():
            server.stop()


@pytest.fixture
def world(tmp_path, digits_models, monkeypatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("MODELPRESS_ROLLOUT_TICK_SECONDS", "1")
    prom = Prometheus(tmp_path, [])
    try:
        yield {"tmp": tmp_path, "models": digits_models, "prom": prom}
    finally:
        prom.stop()


def roll_out(world: dict[str, Any], candidate: str) -> tuple[dict[str, Any], dict[str, Any], list, Router]:
    """Roll the ``candidate`` artifact out into the user's fp32 InferenceService until it settles."""
    models, prom = world["models"], world["prom"]
    local = {STABLE_URI: models["fp32"], OUT_URI: models[candidate]}
    x = np.load(models["val"])["x"]
    with Cluster(world["tmp"], runner=instant_job(models[candidate]), namespace=NS) as c:
        c.sync(c.server.declare, ISVC[0], "v1beta1", ISVC[1], "InferenceService")
        c.sync(c.server.create, ISVC[0], ISVC[1], NS, existing_isvc(), "v1beta1")
        router = Router(c, prom, local, x, world["tmp"])
        router.start()
        try:
            with operator_env(c), KopfRunner(["run", "--standalone", "--namespace", NS, *MODULES], timeout=60):
                c.apply_model(model_doc(prom.url))
                final = c.wait_phase("digits", {"Serving", "RolledBack"}, timeout=120)
        finally:
            router.close()
        assert router.error is None, router.error
        return final, c.objects(*ISVC)[0], c.events("digits"), router


def sent_to(router: Router, storage_uri_prefix: str) -> int:
    """Requests sent to predictors whose own model (not a shadow candidate) is under the prefix."""
    total = 0
    for key, count in router.sent.items():
        storage_uri, storage_uris, _ = json.loads(key)
        served = storage_uri or next(
            s["uri"] for s in storage_uris if s.get("mountPath", DEFAULT_MOUNT) == DEFAULT_MOUNT
        )
        total += count if served.startswith(storage_uri_prefix) else 0
    return total


def test_a_damaged_candidate_is_stopped_in_shadow_with_the_numbers_and_never_serves(world):
    final, isvc, events, router = roll_out(world, "damaged")
    status = final["status"]
    rollout = status["rollout"]
    assert status["phase"] == "RolledBack", rollout
    assert [h["event"] for h in rollout["history"]] == ["ShadowStarted", "ShadowFailed"]
    values = rollout["lastAnalysis"]["values"]
    assert rollout["lastAnalysis"]["verdict"] == "Fail" and values["shadowSamples"] >= 100
    assert values["shadowAgreement"] < 0.9 and values["shadowAgreementUpperBound"] < 0.97
    assert "shadow top-1 agreement" in rollout["history"][-1]["message"]
    # No user ever got the candidate: no canary step, no request to a predictor serving it.
    assert sent_to(router, OUT_URI) == 0 and sent_to(router, STABLE_URI) > 0
    assert any(s.shadowing for s in router.servers.values())  # the stable one did compare it
    [failed] = [e for e in events if e["reason"] == "ShadowFailed"]
    assert failed["type"] == "Warning" and f"agreement {values['shadowAgreement']:.4f}" in failed["message"]
    assert any(e["reason"] == "ShadowStarted" and e["type"] == "Normal" for e in events)
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and "shadow top-1 agreement" in ready["message"]
    # Back to the plain stable predictor: no candidate loaded, no shadow flags.
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == STABLE_URI and "storageUris" not in predictor
    assert "args" not in predictor["model"] and not isvc["spec"].get("canary")


def test_a_good_candidate_passes_shadow_and_the_canary_and_is_serving(world):
    final, isvc, events, router = roll_out(world, "int8")
    status = final["status"]
    rollout = status["rollout"]
    artifact = status["artifact"]["storageUri"]
    assert status["phase"] == "Serving", rollout
    assert [h["event"] for h in rollout["history"]] == ["ShadowStarted", "ShadowPassed", "Promoted"]
    passed = rollout["history"][1]["message"]
    assert passed.startswith("shadow passed: shadow checks passed: ") and "agreement" in passed
    # The canary step was judged on agreement too (duringCanary): the stable predictor kept shadowing.
    assert rollout["lastAnalysis"]["verdict"] == "Pass" and rollout["lastAnalysis"]["values"]["shadowSamples"] >= 100
    assert sent_to(router, OUT_URI) > 0  # users reached it only from the canary step on
    assert {"ShadowStarted", "ShadowPassed", "Promoted"} <= {e["reason"] for e in events}
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == artifact and "storageUris" not in predictor
    assert "args" not in predictor["model"] and not isvc["spec"].get("canary")
    assert condition(status, "Ready")["status"] == "True"
