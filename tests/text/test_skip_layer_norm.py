"""The fused export's SkipLayerNormalization rewrite computes the same values as ORT's kernel."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.jobs.hf import skip_layer_norm_as_sum

HIDDEN = 8


def _graph(opset: int, with_bias: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=HIDDEN).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=HIDDEN).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=HIDDEN).astype(np.float32), "bias"),
    ]
    inputs = ["x", "skip", "gamma", "beta", *(["bias"] if with_bias else [])]
    node = helper.make_node("SkipLayerNormalization", inputs, ["y"], name="ln", domain="com.microsoft", epsilon=1e-5)
    shape = ["batch", "seq", HIDDEN]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    )


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )[0]


@pytest.mark.parametrize("with_bias", [True, False])
def test_rewrite_matches_the_kernel(with_bias: bool) -> None:
    model = _graph(17, with_bias)
    rewritten = skip_layer_norm_as_sum(onnx.ModelProto.FromString(model.SerializeToString()))
    assert [n.op_type for n in rewritten.graph.node] == ["Sum", "LayerNormalization"]
    onnx.checker.check_model(rewritten)
    rng = np.random.default_rng(1)
    feeds = {n: rng.normal(size=(2, 5, HIDDEN)).astype(np.float32) for n in ("x", "skip")}
    np.testing.assert_allclose(_run(rewritten, feeds), _run(model, feeds), atol=1e-5)


def test_a_graph_below_opset_17_keeps_the_fused_kernel() -> None:
    rewritten = skip_layer_norm_as_sum(_graph(16, with_bias=True))
    assert [n.op_type for n in rewritten.graph.node] == ["SkipLayerNormalization"]
