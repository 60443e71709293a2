"""quantize: ONNX Runtime's quantizers on the real digits model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelpress.api import Quantize
from modelpress.jobs.dataset import Samples
from modelpress.jobs.methods import MethodData, get_method

from .conftest import accuracy, batch_of, fingerprint, predict


def quantize(handle, data, **config):
    return get_method("quantize").apply(handle, Quantize.model_validate(config), data)


@pytest.mark.parametrize(
    ("config", "max_weight_ratio", "max_drop"),
    [
        ({"mode": "dynamic"}, 0.27, 0.02),
        ({"mode": "dynamic", "perChannel": True}, 0.28, 0.02),
        ({"mode": "static"}, 0.27, 0.02),
        ({"mode": "static", "calibrationMethod": "percentile", "perChannel": True}, 0.28, 0.03),
        ({"mode": "fp16"}, 0.51, 0.005),
        ({"mode": "int4-weight-only", "blockSize": 32}, 0.2, 0.03),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(map(str, v.values())),
)
def test_modes_shrink_weights_and_keep_accuracy(onnx_model, data, val, config, max_weight_ratio, max_drop):
    before = fingerprint(onnx_model)
    result = quantize(onnx_model, data, **config)
    assert fingerprint(onnx_model) == before, "quantize mutated its input"
    out = result.model
    onnx.checker.check_model(out.onnx_model)
    assert out.input_names == ["input"] and out.output_names == ["logits"]
    ratio = result.changes["weightBytesAfter"] / result.changes["weightBytesBefore"]
    assert ratio <= max_weight_ratio
    assert accuracy(onnx_model, val) - accuracy(out, val) <= max_drop
    # Callers keep sending float32 and get float32 back, whatever the mode.
    logits = predict(out, batch_of(val, 16))
    assert logits.dtype == np.float32 and logits.shape == (16, 10)


def test_modes_use_the_expected_kernels(onnx_model, data):
    ops = {
        mode: {n.op_type for n in quantize(onnx_model, data, mode=mode).model.onnx_model.graph.node}
        for mode in ("dynamic", "static", "int4-weight-only")
    }
    assert "MatMulInteger" in ops["dynamic"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops["static"]
    assert "MatMulNBits" in ops["int4-weight-only"]


def test_int4_is_smaller_than_int8_is_smaller_than_fp16(onnx_model, data):
    size = {
        mode: len(quantize(onnx_model, data, mode=mode).model.onnx_model.SerializeToString())
        for mode in ("fp16", "dynamic", "int4-weight-only")
    }
    assert size["int4-weight-only"] < size["dynamic"] < size["fp16"] < len(onnx_model.onnx_model.SerializeToString())


@pytest.mark.parametrize("mode", ["dynamic", "static", "fp16", "int4-weight-only"])
def test_exclude_nodes_stay_float(onnx_model, data, mode):
    kept = "node_linear_2"  # the classifier head, named as exported
    out = quantize(onnx_model, data, mode=mode, excludeNodes=[kept]).model.onnx_model
    inits = {t.name: t for t in out.graph.initializer}
    node = next(n for n in out.graph.node if n.name == kept)
    assert node.op_type == "MatMul"
    weight = inits[node.input[1]]
    assert numpy_helper.to_array(weight).dtype == np.float32
    float_matmuls = [
        n.name
        for n in out.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
    ]
    if mode == "fp16":  # the other layers hold float16 weights
        others = [n for n in out.graph.node if n.name in ("node_linear", "node_linear_1")]
        assert len(others) == 2 and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16 for n in others)
    else:  # only the excluded layer still multiplies by a float weight
        assert float_matmuls == [kept]


def test_unknown_exclude_node_is_a_clear_error(onnx_model, data):
    with pytest.raises(ValueError, match=r"quantize.excludeNodes.*no node named \['nope'\].*node_linear"):
        quantize(onnx_model, data, mode="dynamic", excludeNodes=["nope"])


def test_static_without_calibration_samples_is_a_clear_error(onnx_model, data):
    empty = MethodData(task="classification", train=data.train, calibration=Samples([]))
    with pytest.raises(ValueError, match="static needs calibration samples: set validation.calibration"):
        quantize(onnx_model, empty, mode="static")


def test_torch_handle_is_refused(torch_model, data):
    with pytest.raises(ValueError, match="ONNX"):
        quantize(torch_model, data, mode="dynamic")


def test_failed_pre_processing_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch, caplog):
    """ORT dumps sym_shape_infer_temp.onnx (+ weights) into the cwd when its symbolic
    shape inference is incomplete; pre_process must keep that in its scratch dir and
    fall back to the graph as it is."""
    from onnx import TensorProto, helper

    from modelpress.jobs.methods.quantize import pre_process

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="custom.ops")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    monkeypatch.chdir(tmp_path)
    out = pre_process(model)
    assert "Incomplete symbolic shape inference" in caplog.text  # the failure path really ran
    assert [n.op_type for n in out.graph.node] == ["Mystery"]
    assert list(tmp_path.iterdir()) == []
