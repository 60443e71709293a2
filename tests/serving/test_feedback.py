"""Prediction ids and the feedback endpoint, on a real modelpress-onnx ModelServer process."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelpress.jobs.feedback import MAX_BODY_BYTES, MAX_ITEMS, PREDICTION_ID_HEADER
from modelpress.jobs.serving import find_model_file


def post(url: str, body: dict | list | bytes) -> tuple[int, dict, dict[str, str]]:
    """Status, JSON body and (lower-cased) headers of a POST."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), {k.lower(): v for k, v in e.headers.items()}


def metrics(server_url: str) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"{server_url}/metrics", timeout=5).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


@pytest.fixture
def digits(digits_models):
    x = np.load(digits_models["val"])["x"][:2]
    digest = hashlib.sha256(find_model_file(digits_models["int8"]).read_bytes()).hexdigest()
    return digits_models["int8"], x, digest


def predict_v1(server, x: np.ndarray) -> str:
    status, _, headers = post(f"{server.url}/v1/models/digits:predict", {"instances": x.tolist()})
    assert status == 200
    return headers[PREDICTION_ID_HEADER]


def test_every_response_carries_a_unique_prediction_id_and_is_counted(digits, start_server):
    model_dir, x, digest = digits
    server = start_server(model_dir, grpc=True)
    ids = [predict_v1(server, x) for _ in range(5)]

    v2 = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, body, headers = post(f"{server.url}/v2/models/digits/infer", v2)
    assert status == 200
    assert body["parameters"]["prediction_id"] == headers[PREDICTION_ID_HEADER]
    ids.append(headers[PREDICTION_ID_HEADER])

    # gRPC: the V2 response parameter comes along.
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def grpc_infer() -> str:
        client = InferenceGRPCClient(f"127.0.0.1:{server.grpc_port}", timeout=30)
        try:
            inp = InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            response = await client.infer(InferRequest("digits", [inp]))
        finally:
            await client.close()
        return response.parameters["prediction_id"].string_param

    ids.append(asyncio.run(grpc_infer()))
    assert len(set(ids)) == len(ids) == 7 and all(len(i) == 32 for i in ids)

    # A refused request gets no id and is no prediction.
    status, _, headers = post(f"{server.url}/v1/models/digits:predict", {"instances": [[1.0, 2.0]]})
    assert status == 400 and PREDICTION_ID_HEADER not in headers
    samples = metrics(server.url)
    assert value(samples, "modelpress_predictions_total", model="digits", artifact_digest=digest) == 7


def test_feedback_is_attributed_to_the_digest_and_summed(digits, start_server):
    model_dir, x, digest = digits
    server = start_server(model_dir)
    clicked, ignored, bought = (predict_v1(server, x) for _ in range(3))
    url = f"{server.url}/v1/models/digits/feedback"

    assert post(url, {"predictionId": clicked, "outcome": True})[:2] == (200, {"attributed": 1, "unattributed": 0})
    status, body, _ = post(
        url,
        [
            {"predictionId": ignored, "outcome": False},
            {"predictionId": bought, "outcome": 2.5},
            {"predictionId": "f" * 32, "outcome": True},  # never served here
            {"predictionId": clicked, "outcome": True},  # a second outcome for one id
        ],
    )
    assert (status, body) == (200, {"attributed": 2, "unattributed": 2})

    samples = metrics(server.url)
    mine = {"model": "digits", "artifact_digest": digest}
    assert value(samples, "modelpress_feedback_total", kind="binary", **mine) == 2
    assert value(samples, "modelpress_feedback_total", kind="numeric", **mine) == 1
    assert value(samples, "modelpress_feedback_outcome_sum", **mine) == 3.5  # 1 + 0 + 2.5
    assert value(samples, "modelpress_feedback_outcome_count", **mine) == 3
    assert value(samples, "modelpress_feedback_outcome_squares_sum", **mine) == 7.25  # 1 + 0 + 6.25
    assert value(samples, "modelpress_feedback_unattributed_total", model="digits") == 2

    status, body, _ = post(f"{server.url}/v1/models/other/feedback", {"predictionId": clicked, "outcome": True})
    assert status == 404 and "other" in body["error"]


def test_forgotten_ids_are_unattributed_not_guessed(digits, start_server):
    model_dir, x, digest = digits
    server = start_server(model_dir, args=["--feedback_ids", "2"])
    oldest, middle, newest = (predict_v1(server, x) for _ in range(3))
    url = f"{server.url}/v1/models/digits/feedback"
    status, body, _ = post(url, [{"predictionId": i, "outcome": 1} for i in (oldest, middle, newest)])
    assert (status, body) == (200, {"attributed": 2, "unattributed": 1})
    samples = metrics(server.url)
    assert value(samples, "modelpress_feedback_total", artifact_digest=digest, kind="numeric") == 2
    assert value(samples, "modelpress_feedback_unattributed_total", model="digits") == 1


def raw_post(server, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A POST with hand-set headers (a lying or missing Content-Length), as a hostile client sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/models/digits/feedback")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if headers.get("Transfer-Encoding") == "chunked":
            for start in range(0, len(body), 65536):
                chunk = body[start : start + 65536]
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.send(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_hostile_feedback_bodies_are_one_line_400s(digits, start_server):
    model_dir, x, digest = digits
    server = start_server(model_dir)
    known = predict_v1(server, x)
    url = f"{server.url}/v1/models/digits/feedback"
    item = {"predictionId": known, "outcome": 1}
    hostile: dict[str, bytes] = {
        "not JSON": b"{nope",
        "NaN": f'{{"predictionId": "{known}", "outcome": NaN}}'.encode(),
        "Infinity": f'{{"predictionId": "{known}", "outcome": Infinity}}'.encode(),
        "overflow": f'{{"predictionId": "{known}", "outcome": 1e400}}'.encode(),
        "negative": json.dumps({**item, "outcome": -1}).encode(),
        "string outcome": json.dumps({**item, "outcome": "1"}).encode(),
        "null outcome": json.dumps({**item, "outcome": None}).encode(),
        "number id": json.dumps({**item, "predictionId": 5}).encode(),
        "long id": json.dumps({**item, "predictionId": "a" * 1000}).encode(),
        "missing outcome": json.dumps({"predictionId": known}).encode(),
        "extra field": json.dumps({**item, "digest": "x"}).encode(),
        "scalar": b"3",
        "empty list": b"[]",
        "too many items": json.dumps([item] * (MAX_ITEMS + 1)).encode(),
        "deep nesting": b"[" * 10_000 + b"]" * 10_000,
        "bad item in a list": json.dumps([item, {**item, "outcome": "yes"}]).encode(),
        "too big": b" " * (MAX_BODY_BYTES + 1),
    }
    for what, body in hostile.items():
        status, answer, _ = post(url, body)
        assert status == 400, what
        assert set(answer) == {"error"} and "\n" not in answer["error"], (what, answer)
        assert "Traceback" not in answer["error"] and answer["error"].startswith("feedback"), (what, answer)
    assert "outcome" in post(url, hostile["NaN"])[1]["error"]
    assert "[1].outcome" in post(url, hostile["bad item in a list"])[1]["error"]

    # Too big, told by a declared length or found while streaming a chunked body.
    big = b"[" + b" " * (2 * MAX_BODY_BYTES) + b"]"
    status, answer = raw_post(server, big[:100], {"Content-Length": str(len(big))})
    assert status == 400 and b"over" in answer
    status, answer = raw_post(server, big, {"Transfer-Encoding": "chunked"})
    assert status == 400 and b"over" in answer

    # Nothing was counted, and the id still takes its outcome: a refused request changes nothing.
    samples = metrics(server.url)
    assert value(samples, "modelpress_feedback_total", artifact_digest=digest) == 0
    assert value(samples, "modelpress_feedback_unattributed_total", model="digits") == 0
    assert post(url, item)[:2] == (200, {"attributed": 1, "unattributed": 0})


def test_feedback_ids_flag_is_checked(digits_models):
    result = subprocess.run(
        [sys.executable, "-m", "modelpress.jobs.serving", "--model_dir", str(digits_models["int8"]),
         "--model_name", "digits", "--feedback_ids", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["modelpress-onnx: --feedback_ids must be within [1, 10000000], got 0"]
