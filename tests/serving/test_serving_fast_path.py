"""The runtime's fast path: ``OnnxModel.__call__`` skips KServe's ``Model.__call__`` for
predict (same answers as the bare onnxruntime session for V1 and V2, same errors, our metrics
counted; other verbs still go through KServe), and per-request log lines are off by default."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from kserve import InferInput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.model import InferenceVerb
from onnx import TensorProto, helper
from prometheus_client import REGISTRY

from modelpress.jobs.serving import (
    LATENCY_METRIC,
    REQUEST_LOGGERS,
    REQUESTS_METRIC,
    OnnxModel,
    build_parser,
    quiet_request_logs,
)


@pytest.fixture
def model(tmp_path: Path) -> OnnxModel:
    """Two outputs (scores = x @ w, label = argmax): the V1 many-outputs shape is covered too."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "fast_path",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor("w", TensorProto.FLOAT, [8, 3], rng.normal(size=24).astype(np.float32).tolist())],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    path = tmp_path / "model" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(onnx_model, path)
    served = OnnxModel("fast", tmp_path, device="cpu", intra_op_threads=1)
    served.load()
    return served


def bare(model: OnnxModel, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model.model_dir / "model/1/model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


def count(model: OnnxModel, code: str) -> float:
    value = REGISTRY.get_sample_value(
        REQUESTS_METRIC, {"model": model.name, "artifact_digest": model.digest, "code": code}
    )
    return value or 0.0


def test_v1_answers_equal_the_bare_session_and_are_counted(model: OnnxModel) -> None:
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    before = count(model, "200")
    observed = REGISTRY.get_sample_value(
        f"{LATENCY_METRIC}_count", {"model": model.name, "artifact_digest": model.digest}
    )
    response, headers = asyncio.run(model({"instances": x.tolist()}))
    scores, label = bare(model, x)
    assert list(headers) == ["x-prediction-id"]  # the only header the runtime adds (jobs/feedback.py)
    assert response == {"predictions": [{"scores": scores[i].tolist(), "label": int(label[i])} for i in range(len(x))]}
    assert count(model, "200") == before + 1
    assert (
        REGISTRY.get_sample_value(f"{LATENCY_METRIC}_count", {"model": model.name, "artifact_digest": model.digest})
        == (observed or 0.0) + 1
    )


@pytest.mark.parametrize("binary", [True, False])
def test_v2_answers_equal_the_bare_session(model: OnnxModel, binary: bool) -> None:
    x = np.random.default_rng(2).normal(size=(2, 8)).astype(np.float32)
    inp = InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    request = InferRequest("fast", [inp], request_id="r1", parameters={"binary_data_output": binary})
    response, _ = asyncio.run(model(request))
    assert isinstance(response, InferResponse)
    assert response.id == "r1"
    got = {o.name: o.as_numpy() for o in response.outputs}
    scores, label = bare(model, x)
    np.testing.assert_array_equal(got["scores"], scores)
    np.testing.assert_array_equal(got["label"], label)
    body, json_size = response.to_rest()  # the wire form in the format the request asked for
    assert (json_size is not None) == binary


def test_bad_input_is_a_400_and_other_verbs_keep_kserves_path(model: OnnxModel) -> None:
    before = count(model, "400")
    with pytest.raises(InvalidInput, match="takes inputs"):
        asyncio.run(model({"instances": [{"wrong": [0.0] * 8}]}))
    assert count(model, "400") == before + 1
    with pytest.raises(NotImplementedError):  # KServe's Model.__call__ -> Model.explain
        asyncio.run(model({"instances": [[0.0] * 8]}, verb=InferenceVerb.EXPLAIN))


def test_request_logs_are_off_by_default_and_warnings_still_pass() -> None:
    assert build_parser().parse_args(["--model_dir", "m"]).request_logs == "false"
    loggers = [logging.getLogger(name) for name in REQUEST_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        quiet_request_logs()
        for logger in loggers:
            assert not logger.isEnabledFor(logging.INFO)
            assert logger.isEnabledFor(logging.WARNING)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
