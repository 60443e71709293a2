"""Shadow traffic in the modelpress-onnx runtime (jobs/shadow.py): the per-task comparisons
against independently computed numbers, then real ModelServer processes shadowing a
candidate, read through their own /metrics."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper
from scipy.spatial.distance import cosine as cosine_distance
from scipy.special import rel_entr, softmax

from modelpress.jobs import shadow
from modelpress.jobs.serving import find_model_file

PREDICT_V1 = "/v1/models/digits:predict"
INFER_V2 = "/v2/models/digits/infer"


# --- the comparisons ---------------------------------------------------------------------------


def test_classification_logits_agreement_and_kl_match_scipy():
    rng = np.random.default_rng(0)
    stable, candidate = rng.normal(size=(2, 50, 7)) * 3
    got = shadow.compare("classification", stable, candidate)
    assert got.rows == 50
    assert got.agreements == sum(int(np.argmax(s) == np.argmax(c)) for s, c in zip(stable, candidate, strict=True))
    want = rel_entr(softmax(stable, axis=1), softmax(candidate, axis=1)).sum(axis=1)
    np.testing.assert_allclose(got.kl_divergence, want, rtol=1e-9, atol=1e-12)
    assert got.cosine is None and got.abs_error is None and got.relative_error is None


def test_classification_rows_that_are_distributions_are_taken_as_they_are():
    stable = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    candidate = np.array([[0.1, 0.2, 0.7], [0.25, 0.75, 0.0]])
    got = shadow.compare("classification", stable, candidate)
    assert got.agreements == 0  # row 0: class 0 vs 2; row 1: 0 (first of a tie) vs 1
    # By hand: KL = sum p ln(p/q), terms with p = 0 contribute 0.
    row0 = 0.7 * np.log(0.7 / 0.1) + 0.2 * np.log(1.0) + 0.1 * np.log(0.1 / 0.7)
    row1 = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    np.testing.assert_allclose(got.kl_divergence, [row0, row1], rtol=1e-12)
    # A class the candidate gives exactly 0 costs a bounded amount (floor 1e-12), never infinity.
    bounded = shadow.compare("classification", np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]])).kl_divergence
    np.testing.assert_allclose(bounded, [0.5 * np.log(0.5) + 0.5 * np.log(0.5 / 1e-12)], rtol=1e-9)
    # The stable row decides: an int8 softmax output summing to 0.8 is renormalised, not softmaxed.
    off = shadow.compare("classification", np.array([[0.6, 0.4]]), np.array([[0.4, 0.4]])).kl_divergence
    np.testing.assert_allclose(off, rel_entr([0.6, 0.4], [0.5, 0.5]).sum(), rtol=1e-12)
    # ... and stable logits make both rows logits, even a candidate row that looks like probabilities.
    logits = shadow.compare("classification", np.array([[2.0, -1.0]]), np.array([[0.3, 0.7]])).kl_divergence
    np.testing.assert_allclose(logits, rel_entr(softmax([2.0, -1.0]), softmax([0.3, 0.7])).sum(), rtol=1e-12)


def test_classification_over_the_last_axis_of_a_sequence_output():
    rng = np.random.default_rng(1)
    stable, candidate = rng.normal(size=(2, 3, 4, 5))  # batch 3, 4 positions, 5 classes
    got = shadow.compare("classification", stable, candidate)
    assert got.rows == 12
    assert got.agreements == int((stable.argmax(-1) == candidate.argmax(-1)).sum())


def test_regression_errors_by_hand():
    stable = np.array([[1.0, 2.0, -3.0], [0.0, 0.0, 0.0]])
    candidate = np.array([[1.5, 2.0, -2.0], [0.0, 0.0, 0.0]])
    got = shadow.compare("regression", stable, candidate)
    assert got.rows == 2
    np.testing.assert_allclose(got.abs_error, [1.5 / 3, 0.0])
    np.testing.assert_allclose(got.relative_error, [1.5 / 6, 0.0])
    # One value per batch item: a (batch,) output has one row per item.
    one = shadow.compare("regression", np.array([2.0, -4.0]), np.array([1.0, -5.0]))
    np.testing.assert_allclose(one.abs_error, [1.0, 1.0])
    np.testing.assert_allclose(one.relative_error, [0.5, 0.25])
    assert one.kl_divergence is None and one.cosine is None


def test_embedding_cosine_matches_scipy_per_batch_item():
    rng = np.random.default_rng(2)
    stable = rng.normal(size=(6, 4, 8))  # token embeddings: one row per batch item, flattened
    candidate = stable + rng.normal(scale=0.3, size=stable.shape)
    got = shadow.compare("embedding", stable, candidate)
    assert got.rows == 6
    want = [1 - cosine_distance(s.ravel(), c.ravel()) for s, c in zip(stable, candidate, strict=True)]
    np.testing.assert_allclose(got.cosine, want, rtol=1e-12)
    np.testing.assert_allclose(got.abs_error, np.abs(candidate - stable).reshape(6, -1).mean(axis=1))
    zeros = shadow.compare("embedding", np.zeros((2, 3)), np.array([[0.0, 0, 0], [1, 0, 0]]))
    np.testing.assert_allclose(zeros.cosine, [1.0, 0.0])  # identical zero rows agree; one zero row does not


@pytest.mark.parametrize(
    ("stable", "candidate", "message"),
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), "shape"),
        (np.zeros((2, 3)), np.array([[0, np.nan, 0], [0, 0, 0]]), "candidate"),
        (np.array([[np.inf, 0, 0], [0, 0, 0]]), np.zeros((2, 3)), "stable"),
    ],
)
def test_outputs_that_cannot_be_compared_are_refused(stable, candidate, message):
    with pytest.raises(ValueError, match=message):
        shadow.compare("classification", stable, candidate)


def outcomes(model: str, shadow_digest: str) -> tuple[float | None, ...]:
    """(compared, dropped, failed) of an in-process runner, from the default registry."""
    from prometheus_client import REGISTRY

    labels = {"model": model, "artifact_digest": "stable-digest", "shadow_digest": shadow_digest}
    return tuple(
        REGISTRY.get_sample_value("modelpress_shadow_requests_total", {**labels, "outcome": o}) for o in shadow.OUTCOMES
    )


def stable_session(digits_models) -> ort.InferenceSession:
    return ort.InferenceSession(str(find_model_file(digits_models["fp32"])), providers=["CPUExecutionProvider"])


def test_offer_never_raises_and_close_ends_the_worker(digits_models):
    config = shadow.ShadowConfig(digits_models["fp32"], "classification", fraction=1.0, queue_size=4)
    runner = shadow.ShadowRunner(
        config, "unit", "stable-digest", stable_session(digits_models), ["CPUExecutionProvider"]
    )
    assert outcomes("unit", runner.digest) == (0.0, 0.0, 0.0)  # series exist from load on
    runner.offer({"input": np.zeros((1, 64), np.float32)}, [])  # no outputs at all: counted, not raised
    runner.close()
    assert not runner._worker.is_alive()
    runner.offer({"input": np.zeros((1, 64), np.float32)}, [np.zeros(1), np.zeros((1, 10))])  # after close
    assert outcomes("unit", runner.digest) == (0.0, 1.0, 1.0)


def test_the_worker_runs_at_the_lowest_cpu_priority(digits_models):
    """Busy cores serve the stable requests first: the shadow worker is reniced, not the server."""
    config = shadow.ShadowConfig(digits_models["fp32"], "classification", fraction=1.0, queue_size=4)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    runner = shadow.ShadowRunner(
        config, "nice", "stable-digest", stable_session(digits_models), ["CPUExecutionProvider"]
    )
    try:
        deadline = time.monotonic() + 10
        while os.getpriority(os.PRIO_PROCESS, runner._worker.native_id) != shadow.WORKER_NICE:
            assert time.monotonic() < deadline, "the worker was never reniced"
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the caller's thread untouched
    finally:
        runner.close()


def test_a_candidate_that_fails_on_an_input_counts_failed_and_keeps_comparing(digits_models, tmp_path):
    """A candidate fixed to batch 1 (accepted at load: same input names and types, same shape
    per row) fails on a batch of 2; NaN in its output is not compared either."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["scores"])],
        "batch_one",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, [64, 10], np.ones(640, np.float32).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    config = shadow.ShadowConfig(tmp_path, "classification", fraction=1.0, queue_size=8)
    runner = shadow.ShadowRunner(
        config, "failing", "stable-digest", stable_session(digits_models), ["CPUExecutionProvider"]
    )
    one, two = np.zeros((1, 64), np.float32), np.zeros((2, 64), np.float32)
    runner.offer({"input": two}, [np.zeros(2), np.full((2, 10), 0.1)])  # candidate raises: batch 2
    runner.offer({"input": one}, [np.zeros(1), np.full((1, 10), np.nan)])  # NaN: not comparable
    runner.offer({"input": one}, [np.zeros(1), np.full((1, 10), 0.1)])  # compared
    deadline = time.monotonic() + 60
    while sum(v or 0 for v in outcomes("failing", runner.digest)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.close()
    assert outcomes("failing", runner.digest) == (1.0, 0.0, 2.0)


def test_waiting_samples_are_compared_as_one_batch_with_the_same_numbers(digits_models):
    """Samples queued while the worker is busy run through the candidate together; the counts
    equal comparing each alone, batch sizes may differ, another dtype starts a new group."""
    stable = stable_session(digits_models)
    damaged = ort.InferenceSession(str(find_model_file(digits_models["damaged"])), providers=["CPUExecutionProvider"])
    x = np.load(digits_models["val"])["x"].astype(np.float32)
    feeds = [x[0:1], x[1:4], x[4:5], x[5:9], x[9:10]]  # 1 + 3 + 1 + 4 + 1 rows
    config = shadow.ShadowConfig(digits_models["damaged"], "classification", 1.0, 64, chaos_latency_ms=300)
    runner = shadow.ShadowRunner(config, "batched", "stable-digest", stable, ["CPUExecutionProvider"])
    expected = 0
    for feed in feeds:
        outputs = stable.run(None, {"input": feed})
        runner.offer({"input": feed}, outputs)  # the first keeps the worker asleep; the rest queue up
        expected += int(shadow.compare("classification", outputs[1], damaged.run(None, {"input": feed})[1]).agreements)
    deadline = time.monotonic() + 60
    while (outcomes("batched", runner.digest)[0] or 0) < len(feeds) and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.close()
    from prometheus_client import REGISTRY

    labels = {"model": "batched", "artifact_digest": "stable-digest", "shadow_digest": runner.digest}
    assert outcomes("batched", runner.digest) == (5.0, 0.0, 0.0)
    assert REGISTRY.get_sample_value("modelpress_shadow_samples_total", labels) == 10
    assert REGISTRY.get_sample_value("modelpress_shadow_top1_agreements_total", labels) == expected
    assert REGISTRY.get_sample_value("modelpress_shadow_kl_divergence_count", labels) == 10

    one = ({"input": x[0:1]}, np.zeros((1, 10), np.float32))
    other_dtype = ({"input": x[0:1].astype(np.float64)}, np.zeros((1, 10), np.float32))
    sizes = [len(g) for g in runner._groups([one, one, one, other_dtype, one])]
    assert sizes == [3, 1, 1]


# --- real servers ------------------------------------------------------------------------------


def digest(model_dir: Path) -> str:
    return hashlib.sha256(find_model_file(model_dir).read_bytes()).hexdigest()


def shadow_args(candidate: Path, fraction: float = 1.0, queue: int = 1024) -> list[str]:
    return [
        f"--shadow_model_dir={candidate}", f"--shadow_fraction={fraction}",
        "--shadow_task=classification", f"--shadow_queue={queue}",
    ]  # fmt: skip


def scrape(server) -> dict[str, float]:
    """Shadow samples of the server's /metrics, summed by sample name (and outcome)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("modelpress_") and not sample.name.endswith("_created"):
                key = sample.name + (f":{sample.labels['outcome']}" if "outcome" in sample.labels else "")
                key += f":le={sample.labels['le']}" if "le" in sample.labels else ""
                out[key] = out.get(key, 0.0) + sample.value
    return out


def labels_of(server) -> set[tuple[str, str, str]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
    return {
        (s.labels["model"], s.labels["artifact_digest"], s.labels["shadow_digest"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("modelpress_shadow_")
    }


def sampled(metrics: dict[str, float]) -> float:
    return sum(metrics.get(f"modelpress_shadow_requests_total:{o}", 0.0) for o in shadow.OUTCOMES)


def settled(server, expected: int | None = None, timeout: float = 60.0) -> dict[str, float]:
    """The metrics once the worker has handled every sampled request: ``expected`` of them, or
    (unknown count) the same total over two scrapes 1.5 s apart."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        metrics = scrape(server)
        if expected is not None and sampled(metrics) == expected:
            return metrics
        if expected is None and previous is not None and sampled(previous) == sampled(metrics):
            return metrics
        assert time.monotonic() < deadline, f"shadow metrics did not settle: {metrics}"
        previous = metrics
        time.sleep(1.5 if expected is None else 0.2)


def post_v1(conn: http.client.HTTPConnection, x: np.ndarray) -> tuple[int, bytes]:
    conn.request("POST", PREDICT_V1, json.dumps({"instances": x.tolist()}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def post_v2_binary(conn: http.client.HTTPConnection, x: np.ndarray) -> tuple[int, bytes]:
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outputs = [triton.InferRequestedOutput(n, binary_data=True) for n in ("label", "probabilities")]
    body, json_size = triton.InferenceServerClient.generate_request_body([inp], outputs)
    conn.request(
        "POST",
        INFER_V2,
        body,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)},
    )
    response = conn.getresponse()
    # Every answer carries its own random prediction id (jobs/feedback.py): the same length
    # each time, so masking it keeps the rest of the bytes comparable.
    body, masked = re.subn(rb'"prediction_id":\s*"[0-9a-f]{32}"', b'"prediction_id":"<id>"', response.read())
    assert masked == 1
    return response.status, body


def test_identical_candidate_agrees_everywhere_and_answers_stay_byte_identical(digits_models, start_server):
    x = np.load(digits_models["val"])["x"][:20]
    plain = start_server(digits_models["fp32"])
    shadowed = start_server(digits_models["fp32"], args=shadow_args(digits_models["fp32"]))
    fp32 = digest(digits_models["fp32"])
    # Series exist at 0 from load on, labelled with both digests (here the same file).
    assert labels_of(shadowed) == {("digits", fp32, fp32)}
    before = scrape(shadowed)
    assert before["modelpress_shadow_samples_total"] == 0.0 and sampled(before) == 0.0
    assert before["modelpress_shadow_kl_divergence_count"] == 0.0 and labels_of(plain) == set()

    answers: dict[str, list[tuple[int, bytes]]] = {}
    for name, server in (("plain", plain), ("shadowed", shadowed)):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        answers[name] = [post_v1(conn, x[i : i + 1]) for i in range(10)]
        answers[name] += [post_v2_binary(conn, x[i : i + 1]) for i in range(10)]
        answers[name] += [post_v1(conn, x[:8]), post_v2_binary(conn, x[:8])]  # batches of 8 rows
        conn.close()
    assert all(status == 200 for status, _ in answers["shadowed"])
    assert answers["shadowed"] == answers["plain"]

    metrics = settled(shadowed, expected=22)  # fraction 1.0: every request compared
    assert metrics["modelpress_shadow_requests_total:compared"] == 22
    assert metrics["modelpress_shadow_samples_total"] == 20 + 2 * 8
    assert metrics["modelpress_shadow_top1_agreements_total"] == 36
    assert metrics["modelpress_shadow_kl_divergence_count"] == 36
    assert 0.0 <= metrics["modelpress_shadow_kl_divergence_sum"] < 1e-9


def test_damaged_candidate_agreement_is_far_below_and_matches_onnxruntime(digits_models, start_server):
    x = np.load(digits_models["val"])["x"]
    server = start_server(digits_models["fp32"], args=shadow_args(digits_models["damaged"]))
    assert labels_of(server) == {("digits", digest(digits_models["fp32"]), digest(digits_models["damaged"]))}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    batches = np.array_split(x, 9)
    assert all(post_v2_binary(conn, b)[0] == 200 for b in batches)
    conn.close()
    metrics = settled(server, expected=len(batches))

    # The same numbers, computed here from the two models' probabilities with scipy.
    def probabilities(model_dir: Path) -> np.ndarray:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(find_model_file(model_dir)), options, providers=["CPUExecutionProvider"])
        return sess.run(["probabilities"], {"input": x})[0].astype(np.float64)

    p, q = probabilities(digits_models["fp32"]), probabilities(digits_models["damaged"])
    agreements = int((p.argmax(1) == q.argmax(1)).sum())
    assert metrics["modelpress_shadow_samples_total"] == len(x)
    assert metrics["modelpress_shadow_top1_agreements_total"] == agreements
    assert agreements < 0.8 * len(x)  # ~60%: far below any sensible minAgreement
    kl = rel_entr(p / p.sum(1, keepdims=True), np.maximum(q / q.sum(1, keepdims=True), 1e-12)).sum(axis=1)
    assert metrics["modelpress_shadow_kl_divergence_count"] == len(x)
    np.testing.assert_allclose(metrics["modelpress_shadow_kl_divergence_sum"], kl.sum(), rtol=1e-3)
    assert metrics["modelpress_shadow_requests_total:failed"] == 0


def test_half_sampling_stays_within_a_wide_binomial_bound(digits_models, start_server):
    x = np.load(digits_models["val"])["x"]
    server = start_server(digits_models["fp32"], args=shadow_args(digits_models["fp32"], fraction=0.5))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    n = 300
    assert all(post_v1(conn, x[i % len(x) : i % len(x) + 1])[0] == 200 for i in range(n))
    conn.close()
    metrics = settled(server)
    compared = metrics["modelpress_shadow_requests_total:compared"]
    # Binomial(300, 0.5): mean 150, sd 8.7; +-50 is ~5.8 sd (a false failure about once in 10^8 runs).
    assert abs(compared - n * 0.5) <= 50, compared
    assert metrics["modelpress_shadow_requests_total:dropped"] == 0
    assert metrics["modelpress_shadow_samples_total"] == compared == metrics["modelpress_shadow_top1_agreements_total"]


def test_a_full_queue_drops_and_counts_while_every_answer_stays_fast(digits_models, start_server):
    x = np.load(digits_models["val"])["x"]
    server = start_server(
        digits_models["fp32"],
        env={"MODELPRESS_CHAOS_SHADOW_LATENCY_MS": "1500"},  # each candidate run takes >= 1.5 s
        args=shadow_args(digits_models["fp32"], queue=1),
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert [post_v1(conn, x[i : i + 1])[0] for i in range(10)] == [200] * 10
    conn.close()
    metrics = settled(server, expected=10)
    assert metrics["modelpress_shadow_requests_total:dropped"] >= 1
    assert (
        metrics["modelpress_shadow_requests_total:compared"] + metrics["modelpress_shadow_requests_total:dropped"] == 10
    )
    # The 1.5 s of each candidate run never reached a user: all 10 answers within 1 s.
    assert metrics["modelpress_inference_latency_seconds_bucket:le=1.0"] == 10
    # A worker busy with the candidate does not hold the process at exit (daemon thread).
    server.proc.terminate()
    assert server.proc.wait(timeout=30) is not None


def write_other_inputs_model(model_dir: Path) -> None:
    """A classifier that takes "pixels" instead of the stable model's "input"."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "w"], ["logits"])],
        "other_inputs",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, [64, 10], np.zeros(640, np.float32).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = model_dir / "model" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, path)


@pytest.mark.parametrize(
    ("case", "flags", "message"),
    [
        ("other inputs", ["--shadow_task=classification"], "must take the same inputs"),
        ("missing dir", ["--shadow_task=classification"], "no ONNX model in"),
        ("no task", [], "needs --shadow_task"),
        ("fraction", ["--shadow_task=classification", "--shadow_fraction=1.5"], "--shadow_fraction must be within"),
    ],
)
def test_a_candidate_that_cannot_shadow_is_one_line_naming_the_flag(digits_models, tmp_path, case, flags, message):
    candidate = tmp_path / "candidate"
    if case == "other inputs":
        write_other_inputs_model(candidate)
    elif case != "missing dir":
        candidate = digits_models["fp32"]
    proc = subprocess.run(
        [
            sys.executable, "-m", "modelpress.jobs.serving", "--model_dir", str(digits_models["fp32"]),
            "--model_name", "digits", "--enable_grpc", "false", "--http_port", "0",
            f"--shadow_model_dir={candidate}", *flags,
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("modelpress-onnx:")]
    assert len(lines) == 1 and "--shadow_" in lines[0] and message in lines[0], proc.stderr
    if case in ("other inputs", "missing dir"):
        assert "--shadow_model_dir" in lines[0]
