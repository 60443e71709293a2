"""lowRank: SVD factorization on torch and ONNX, on the real digits model."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.api import LowRank
from modelpress.jobs.methods import get_method
from modelpress.jobs.methods.low_rank import choose_rank, factorize

from .conftest import TEST_HIDDEN, accuracy, batch_of, fingerprint, parameters, predict


def low_rank(handle, data, **config):
    return get_method("lowRank").apply(handle, LowRank.model_validate(config), data)


def test_factorize_recovers_an_exactly_low_rank_matrix():
    rng = np.random.default_rng(0)
    weight = (rng.normal(size=(96, 5)) @ rng.normal(size=(5, 80))).astype(np.float32)
    a, b = factorize(weight, LowRank(energy=0.999999))
    assert a.shape == (5, 80) and b.shape == (96, 5)
    np.testing.assert_allclose(b @ a, weight, rtol=1e-3, atol=1e-3)


def test_rank_choice_by_energy_and_ratio():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # squared 9, 4, 1: cumulative 9/14, 13/14, 14/14
    assert choose_rank(s, LowRank(energy=9 / 14)) == 1
    assert choose_rank(s, LowRank(energy=0.92)) == 2  # 13/14 = 0.929 covers it
    assert choose_rank(s, LowRank(energy=1.0)) == 3
    assert choose_rank(s, LowRank(rank_ratio=0.5)) == 2


def test_torch_factorization_reduces_parameters_and_keeps_accuracy(torch_model, data, val):
    before = fingerprint(torch_model)
    result = low_rank(torch_model, data, energy=0.9)
    assert fingerprint(torch_model) == before, "lowRank mutated its input"
    assert result.changes["parametersAfter"] == parameters(result.model) < result.changes["parametersBefore"]
    hidden = "net.3.weight"
    full, rank = result.changes["ranks"][hidden]
    assert full == min(TEST_HIDDEN) and rank * (TEST_HIDDEN[0] + TEST_HIDDEN[1]) < TEST_HIDDEN[0] * TEST_HIDDEN[1]
    assert accuracy(torch_model, val) - accuracy(result.model, val) <= 0.02


def test_onnx_factorization_matches_torch(torch_model, onnx_model, data, val):
    before = fingerprint(onnx_model)
    on_onnx = low_rank(onnx_model, data, rankRatio=0.3)
    assert fingerprint(onnx_model) == before
    on_torch = low_rank(torch_model, data, rankRatio=0.3)
    assert on_onnx.model.stage == "onnx"
    ops = [n.op_type for n in on_onnx.model.onnx_model.graph.node]
    assert ops.count("MatMul") > 3  # each factorized layer became two MatMuls
    assert (
        on_onnx.changes["parametersAfter"] == on_torch.changes["parametersAfter"] < on_onnx.changes["parametersBefore"]
    )
    x = batch_of(val)
    np.testing.assert_allclose(predict(on_onnx.model, x), predict(on_torch.model, x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("stage", ["torch", "onnx"])
def test_layers_that_would_grow_are_left_alone(torch_model, onnx_model, data, val, stage):
    handle = torch_model if stage == "torch" else onnx_model
    result = low_rank(handle, data, rankRatio=1.0)
    assert result.changes["ranks"] == {}
    assert result.changes["parametersAfter"] == result.changes["parametersBefore"]
    np.testing.assert_allclose(
        predict(result.model, batch_of(val, 8)), predict(handle, batch_of(val, 8)), rtol=1e-5, atol=1e-5
    )


def test_onnx_unnamed_nodes_and_shared_weights_each_factorize(tmp_path):
    """ONNX allows empty node names and one weight feeding several MatMuls."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelpress.api import LowRank
    from modelpress.jobs.methods import ModelHandle, get_method

    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal((32, 32)).astype(np.float32) for _ in range(2))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),  # unnamed
        helper.make_node("MatMul", ["h1", "w2"], ["h2"]),  # unnamed
        helper.make_node("MatMul", ["h2", "w1"], ["y"], name="shared"),  # shares w1
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 32])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    handle = ModelHandle(["x"], ["y"], onnx_model=helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    result = get_method("lowRank").apply(handle, LowRank(rank_ratio=0.25), None)
    onnx.checker.check_model(result.model.onnx_model)
    assert len(result.changes["ranks"]) == 3  # every MatMul factorized, none merged
    assert [n.op_type for n in result.model.onnx_model.graph.node].count("MatMul") == 6
