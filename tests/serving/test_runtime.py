"""The modelpress-onnx runtime as a real KServe ModelServer process on loopback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from modelpress.jobs.serving import REQUESTS_METRIC, Chaos, find_model_file


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def metric_value(server_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of a metric whose labels include ``labels``."""
    text = urllib.request.urlopen(f"{server_url}/metrics", timeout=5).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def reference(model_dir, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(find_model_file(model_dir)), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})


def test_v1_v2_and_triton_binary_agree_with_onnxruntime(digits_models, start_server):
    val = np.load(digits_models["val"])
    x = val["x"][:8]
    label, probs = reference(digits_models["int8"], x)
    server = start_server(digits_models["int8"])

    status, body = post(f"{server.url}/v1/models/digits:predict", {"instances": x.tolist()})
    assert status == 200
    # Two outputs -> one dict per instance in V1.
    assert [p["label"] for p in body["predictions"]] == label.tolist()

    status, body = post(
        f"{server.url}/v2/models/digits/infer",
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]},
    )
    assert status == 200
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == label.tolist()
    np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(8, 10), probs, rtol=1e-5)

    # The Triton client with binary tensors in both directions.
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("digits")
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(
        "digits", [inp], outputs=[triton.InferRequestedOutput(n, binary_data=True) for n in ("label", "probabilities")]
    )
    assert result.as_numpy("label").tolist() == label.tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-6)

    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"label": "INT64", "probabilities": "FP32"}


def test_metrics_are_labelled_with_the_artifact_digest_and_status(digits_models, start_server):
    server = start_server(digits_models["fp32"])
    digest = hashlib.sha256(find_model_file(digits_models["fp32"]).read_bytes()).hexdigest()
    x = np.load(digits_models["val"])["x"][:1]
    for _ in range(3):
        assert post(f"{server.url}/v1/models/digits:predict", {"instances": x.tolist()})[0] == 200
    status, body = post(f"{server.url}/v1/models/digits:predict", {"instances": [[1.0, 2.0]]})
    assert status == 400 and "rejected the input" in body["error"]

    ok = metric_value(server.url, REQUESTS_METRIC, artifact_digest=digest, code="200")
    bad = metric_value(server.url, REQUESTS_METRIC, artifact_digest=digest, code="400")
    assert (ok, bad) == (3.0, 1.0)
    count = metric_value(server.url, "modelpress_inference_latency_seconds_count", artifact_digest=digest)
    assert count == 4.0
    # Sub-millisecond buckets are exposed for this artifact's series.
    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
    bounds = {
        float(s.labels["le"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelpress_inference_latency_seconds_bucket" and s.labels.get("artifact_digest") == digest
    }
    assert sum(b < 0.001 for b in bounds) >= 3, sorted(bounds)


def test_chaos_options_inject_errors_and_latency(digits_models, start_server):
    server = start_server(
        digits_models["int8"], {"MODELPRESS_CHAOS_ERROR_RATE": "1", "MODELPRESS_CHAOS_LATENCY_MS": "30"}
    )
    x = np.load(digits_models["val"])["x"][:1]
    status, body = post(f"{server.url}/v1/models/digits:predict", {"instances": x.tolist()})
    assert status == 500 and "injected failure" in body["error"]
    assert metric_value(server.url, REQUESTS_METRIC, code="500") == 1.0
    # 30 ms of injected latency lands above the 25 ms bucket.
    assert metric_value(server.url, "modelpress_inference_latency_seconds_bucket", le="0.025") == 0.0
    assert metric_value(server.url, "modelpress_inference_latency_seconds_bucket", le="0.05") == 1.0


def test_bad_model_dir_is_one_readable_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "modelpress.jobs.serving", "--model_dir", str(tmp_path), "--model_name", "m"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "no ONNX model in" in proc.stderr and "model/1/model.onnx" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_chaos_rejects_out_of_range_values():
    for bad in ({"error_rate": 1.5}, {"latency_ms": -1}):
        with pytest.raises(ValueError, match="chaos"):
            Chaos(**bad)


def test_the_charts_serving_runtime_args_parse_with_the_runtime_cli():
    """The ClusterServingRuntime in the Helm chart starts this module with these flags."""
    import re
    from pathlib import Path

    from modelpress.jobs.serving import build_parser

    template = Path(__file__).resolve().parents[2] / "charts" / "modelpress" / "templates" / "servingruntime.yaml"
    text = template.read_text()
    assert "command: [python, -m, modelpress.jobs.serving]" in text
    args = [a.replace('{{ "{{.Name}}" }}', "digits") for a in re.findall(r"^\s+- (--.+)$", text, re.MULTILINE)]
    parsed = build_parser().parse_args(args)
    assert (str(parsed.model_dir), parsed.model_name, parsed.http_port) == ("/mnt/models", "digits", 8080)
    # One container port (KServe's rule), the HTTP one, serving both HTTP protocols.
    assert re.findall(r"containerPort: (\d+)", text) == [str(parsed.http_port)]
    assert "name: http1" in text and "protocolVersions: [v1, v2]" in text


def test_open_inference_grpc_with_kserves_own_client(digits_models, start_server):
    """The same ModelServer on its gRPC port: readiness, metadata with the real input and
    output names, and an inference that matches onnxruntime, through kserve's client."""
    import asyncio

    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    x = np.load(digits_models["val"])["x"][:4]
    label, probs = reference(digits_models["int8"], x)
    server = start_server(digits_models["int8"], grpc=True)
    address = f"127.0.0.1:{server.grpc_port}"

    async def call() -> tuple[bool, bool, object, object]:
        client = InferenceGRPCClient(address, timeout=30)
        try:
            live, ready = await client.is_server_live(), await client.is_model_ready("digits")
            inp = InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            response = await client.infer(InferRequest("digits", [inp]))
        finally:
            await client.close()
        # The client has no metadata call; kserve's generated stub on the same port has.
        async with grpc.aio.insecure_channel(address) as channel:
            meta = await GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name="digits"))
        return live, ready, response, meta

    live, ready, response, meta = asyncio.run(call())
    assert live and ready
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 64])]
    assert {t.name: t.datatype for t in meta.outputs} == {"label": "INT64", "probabilities": "FP32"}
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert outputs["label"].tolist() == label.tolist()
    np.testing.assert_allclose(outputs["probabilities"].reshape(probs.shape), probs, rtol=1e-6)
