"""quantize.smoothing: SmoothQuant-style activation smoothing before int8 quantization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.api import Quantize
from modelpress.jobs import measure
from modelpress.jobs.dataset import Samples
from modelpress.jobs.methods import MethodData, ModelHandle, get_method
from modelpress.jobs.methods._onnx_graph import gemm_to_matmul
from modelpress.jobs.methods._smooth import smooth
from modelpress.jobs.methods.quantize import PREPROCESSED, pre_process

from .conftest import accuracy, batch_of, fingerprint, predict

OUTLIER_CHANNEL, OUTLIER_GAIN = 5, 60.0


def quantize(handle, data, **config):
    return get_method("quantize").apply(handle, Quantize.model_validate(config), data)


def test_smoothed_graph_is_float_equivalent(onnx_model, data, val):
    graph = gemm_to_matmul(onnx_model.onnx_model)
    before = fingerprint(onnx_model)
    smoothed, inserted = smooth(graph, data.calibration, alpha=0.75)
    assert fingerprint(onnx_model) == before
    assert inserted == sum(1 for n in smoothed.graph.node if n.op_type == "Mul" and n.name.endswith("/SmoothMul"))
    assert inserted >= 2  # every MatMul of the MLP reads its own activation
    onnx.checker.check_model(smoothed)
    x = batch_of(val, 64)
    original = predict(onnx_model, x)
    np.testing.assert_allclose(predict(onnx_model.with_model(onnx_model=smoothed), x), original, atol=1e-4, rtol=1e-4)


def test_excluded_nodes_are_not_smoothed(onnx_model, data):
    graph = gemm_to_matmul(onnx_model.onnx_model)
    matmuls = [n.name for n in graph.graph.node if n.op_type == "MatMul"]
    smoothed, inserted = smooth(graph, data.calibration, alpha=0.5, skip=set(matmuls))
    assert inserted == 0
    assert [n.op_type for n in smoothed.graph.node] == [n.op_type for n in graph.graph.node]


def planted_outlier_model(seed: int = 0) -> tuple[ModelHandle, Samples]:
    """y = x @ W where input channel 5 of x is 60x larger than the rest (like a transformer's outlier)."""
    rng = np.random.default_rng(seed)
    features, hidden, outputs = 64, 64, 32
    w1 = rng.normal(0, 0.2, (features, hidden)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (hidden, outputs)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="second"),
        ],
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(0, 1, (256, features)).astype(np.float32)
    x[:, OUTLIER_CHANNEL] *= OUTLIER_GAIN
    return ModelHandle(["x"], ["y"], onnx_model=model), Samples([{"x": row} for row in x])


def relative_error(handle: ModelHandle, reference: ModelHandle, x: np.ndarray) -> float:
    def run(h: ModelHandle) -> np.ndarray:
        return measure.session(h.onnx_model).run(None, {"x": x})[0]

    want = run(reference)
    return float(np.linalg.norm(run(handle) - want) / np.linalg.norm(want))


def test_smoothing_brings_int8_closer_to_float_on_an_outlier_channel():
    model, samples = planted_outlier_model()
    calibration, held_out = samples.split(0.5, seed=1)
    data = MethodData(task="regression", train=calibration, calibration=calibration)
    x = np.stack([f["x"] for f in held_out.features])
    plain = quantize(model, data, mode="dynamic", perChannel=True)
    smoothed = quantize(model, data, mode="dynamic", perChannel=True, smoothing=0.75)
    assert smoothed.changes["smoothedActivations"] == 2  # x and h, one Mul each
    assert "MatMulInteger" in {n.op_type for n in smoothed.model.onnx_model.graph.node}
    plain_error, smoothed_error = relative_error(plain.model, model, x), relative_error(smoothed.model, model, x)
    assert smoothed_error < 0.5 * plain_error, (plain_error, smoothed_error)


def test_smoothing_without_calibration_samples_is_a_clear_error(onnx_model, data):
    empty = MethodData(task=data.task, train=data.train, calibration=Samples([]))
    with pytest.raises(ValueError, match="smoothing needs calibration samples: set validation.calibration"):
        quantize(onnx_model, empty, mode="dynamic", smoothing=0.5)


def test_pre_processing_runs_once_per_graph(onnx_model):
    once = pre_process(onnx_model.onnx_model)
    assert PREPROCESSED in {p.key for p in once.metadata_props}
    assert pre_process(once).SerializeToString() == once.SerializeToString()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_smoothed_digits_model_keeps_accuracy(onnx_model, data, val, mode):
    result = quantize(onnx_model, data, mode=mode, perChannel=True, smoothing=0.5)
    assert result.changes["smoothedActivations"] >= 2
    onnx.checker.check_model(result.model.onnx_model)
    assert accuracy(onnx_model, val) - accuracy(result.model, val) <= 0.02
    # the artifact does not carry the job-internal pre-processed mark
    assert PREPROCESSED not in {p.key for p in result.model.onnx_model.metadata_props}
