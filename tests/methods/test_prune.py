"""prune: global magnitude (torch + ONNX) and structured neurons/channels on real digits models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modelpress.api import Prune, Task
from modelpress.jobs.dataset import Samples
from modelpress.jobs.examples.digits import load_digits_split, to_samples, train
from modelpress.jobs.export import to_onnx
from modelpress.jobs.methods import MethodData, get_method

from .conftest import TEST_HIDDEN, accuracy, batch_of, fingerprint, parameters, predict, torch_handle


def prune(handle, data, **config):
    return get_method("prune").apply(handle, Prune.model_validate(config), data)


def weight_shapes(handle) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for name, p in handle.module.named_parameters() if p.dim() > 1]


def macs_per_sample(handle, val) -> int:
    """Multiply-accumulates per sample of the exported graph's MatMul/Gemm weights."""
    graph = to_onnx(handle, {"input": batch_of(val, 4)}).onnx_model.graph
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    return sum(
        int(np.prod(inits[n.input[1]])) for n in graph.node if n.op_type in ("Gemm", "MatMul") and n.input[1] in inits
    )


def test_unstructured_torch_reaches_sparsity_and_keeps_accuracy(torch_model, data, val):
    before = fingerprint(torch_model)
    result = prune(torch_model, data, sparsity=0.5)
    assert fingerprint(torch_model) == before, "prune mutated its input"
    weights = [p for p in result.model.module.parameters() if p.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(zeros - 0.5) < 0.01 and abs(result.changes["sparsity"] - zeros) < 1e-3
    assert accuracy(torch_model, val) - accuracy(result.model, val) <= 0.02


def test_unstructured_onnx_applies_the_same_global_rule_as_torch(torch_model, onnx_model, data, val):
    before = fingerprint(onnx_model)
    on_onnx = prune(onnx_model, data, sparsity=0.7)
    assert fingerprint(onnx_model) == before
    on_torch = prune(torch_model, data, sparsity=0.7)
    assert on_onnx.model.stage == "onnx" and abs(on_onnx.changes["sparsity"] - 0.7) < 0.01
    x = batch_of(val)
    np.testing.assert_allclose(predict(on_onnx.model, x), predict(on_torch.model, x), rtol=1e-4, atol=1e-4)


def test_structured_on_onnx_is_a_clear_error(onnx_model, data):
    with pytest.raises(ValueError, match="needs a torch model.*use structure: unstructured"):
        prune(onnx_model, data, structure="neurons", sparsity=0.5)


def test_neurons_shrink_layers_params_and_macs_with_small_accuracy_drop(torch_model, data, val):
    before = fingerprint(torch_model)
    result = prune(torch_model, data, structure="neurons", sparsity=0.5, fineTuneEpochs=2)
    assert fingerprint(torch_model) == before
    h0, h1 = (round(w * 0.5) for w in TEST_HIDDEN)
    assert weight_shapes(result.model) == [(h0, 64), (h1, h0), (10, h1)]  # the output layer keeps 10 classes
    assert result.changes["parametersAfter"] == parameters(result.model) < 0.4 * result.changes["parametersBefore"]
    assert macs_per_sample(result.model, val) < 0.4 * macs_per_sample(torch_model, val)
    assert accuracy(torch_model, val) - accuracy(result.model, val) <= 0.01
    assert predict(result.model, batch_of(val, 3)).shape == (3, 10)


def test_fine_tuning_recovers_accuracy(torch_model, data, val):
    raw = accuracy(prune(torch_model, data, structure="neurons", sparsity=0.85).model, val)
    tuned = accuracy(prune(torch_model, data, structure="neurons", sparsity=0.85, fineTuneEpochs=2).model, val)
    assert tuned > raw


def test_neurons_work_on_a_loaded_torch_export_program(tmp_path, torch_model, data, val):
    program = torch.export.export(
        torch_model.module.eval(),
        (),
        {"input": torch.from_numpy(batch_of(val, 4))},
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
    )
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = torch_handle(torch.export.load(tmp_path / "m.pt2").module())
    result = prune(loaded, data, structure="neurons", sparsity=0.5)
    assert result.changes["parametersAfter"] < 0.4 * result.changes["parametersBefore"]
    np.testing.assert_allclose(
        predict(result.model, batch_of(val, 8)),
        predict(prune(torch_model, data, structure="neurons", sparsity=0.5).model, batch_of(val, 8)),
        rtol=1e-5,
        atol=1e-5,
    )


class Residual(nn.Module):
    """x + fc2(relu(fc1(x))) then a head: fc2's output joins a residual add, so it must keep its width."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.fc1, self.fc2, self.head = (
            nn.Linear(64, 32),
            nn.Linear(32, 48),
            nn.Linear(48, 32),
            nn.Linear(32, 10),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.inp(input)
        return self.head(x + self.fc2(torch.relu(self.fc1(x))))


def test_neurons_never_break_a_residual_connection(data, val):
    handle = torch_handle(Residual().eval())
    result = prune(handle, data, structure="neurons", sparsity=0.5)
    # Only the block's inner width (fc1 -> fc2) can shrink; inp feeds a residual add.
    assert weight_shapes(result.model) == [(32, 64), (24, 32), (32, 24), (10, 32)]
    assert predict(result.model, batch_of(val, 5)).shape == (5, 10)


def test_neurons_without_a_prunable_pair_is_a_clear_error(data):
    with pytest.raises(ValueError, match="no Linear layer that feeds another one"):
        prune(torch_handle(nn.Linear(64, 10)), data, structure="neurons", sparsity=0.5)


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.c1(input.view(-1, 1, 8, 8))))
        return self.fc(torch.relu(self.c2(x)).flatten(1))


def test_channels_shrink_conv_batchnorm_and_next_conv(data, val):
    x_tr, y_tr, _, _ = load_digits_split(0)
    torch.manual_seed(0)
    cnn = train(DigitsCNN(), x_tr, y_tr, epochs=4, seed=0)
    handle = torch_handle(cnn)
    result = prune(handle, data, structure="channels", sparsity=0.5, fineTuneEpochs=1)
    # c1 loses half its channels (and bn its state); c2 keeps its 16 outputs because flatten -> fc follows.
    assert weight_shapes(result.model) == [(8, 1, 3, 3), (16, 8, 3, 3), (10, 1024)]
    buffers = dict(result.model.module.named_buffers())
    assert buffers["bn.running_mean"].shape == (8,) and buffers["bn.running_var"].shape == (8,)
    assert accuracy(handle, val) - accuracy(result.model, val) <= 0.03
    exported = to_onnx(result.model, {"input": batch_of(val, 4)})
    np.testing.assert_allclose(
        predict(exported, batch_of(val, 9)), predict(result.model, batch_of(val, 9)), rtol=1e-4, atol=1e-4
    )


def test_embedding_fine_tunes_towards_the_unpruned_model_without_labels(torch_model, data, val):
    unlabeled = Samples(data.train.features)
    embed = MethodData(task="embedding", train=unlabeled, calibration=unlabeled.take(10), seed=0)
    x = batch_of(val)
    target = predict(torch_model, x)
    raw = prune(torch_model, embed, structure="neurons", sparsity=0.8)
    tuned = prune(torch_model, embed, structure="neurons", sparsity=0.8, fineTuneEpochs=2)
    assert np.mean((predict(tuned.model, x) - target) ** 2) < np.mean((predict(raw.model, x) - target) ** 2)


def test_fine_tuning_a_classifier_without_labels_is_a_clear_error(torch_model, data):
    """The pipeline passes the spec's Task member; messages show its value, not ``Task.classification``."""
    unlabeled = MethodData(
        task=Task.classification, train=to_samples(batch_of(data.train), None), calibration=data.calibration
    )
    assert type(unlabeled.task) is str and unlabeled.task == "classification"
    with pytest.raises(ValueError, match="^fine-tuning a classification model needs labels"):
        prune(torch_model, unlabeled, structure="neurons", sparsity=0.5, fineTuneEpochs=1)
