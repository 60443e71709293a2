"""distill: a narrower student learns from the digits teacher."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelpress.api import Distill, Prune
from modelpress.jobs.dataset import Samples
from modelpress.jobs.examples.digits import DigitsMLP, load_digits_split, train, train_digits_mlp
from modelpress.jobs.methods import MethodData, get_method

from .conftest import TEST_HIDDEN, accuracy, batch_of, fingerprint, predict, torch_handle

WIDTH, EPOCHS = 0.25, 10


def distill(handle, data, **config):
    uri = config.get("student", {}).get("storageUri")
    if uri:  # the pipeline downloads students before compressing (fetch_inputs); here the file is local
        data = dataclasses.replace(data, students={uri: Path(uri.removeprefix("file://"))})
    return get_method("distill").apply(handle, Distill.model_validate(config), data)


def test_student_is_narrower_and_teacher_untouched(torch_model, data, val):
    before = fingerprint(torch_model)
    result = distill(torch_model, data, student={"widthMultiplier": WIDTH}, epochs=1)
    assert fingerprint(torch_model) == before, "distill trained or changed the teacher"
    widths = [p.shape for n, p in result.model.module.named_parameters() if p.dim() > 1]
    h = round(TEST_HIDDEN[0] * WIDTH)
    assert widths == [(h, 64), (h, h), (10, h)]
    assert result.changes["parametersAfter"] < 0.11 * result.changes["parametersBefore"]  # 8970 of 85002
    assert predict(result.model, batch_of(val, 3)).shape == (3, 10)


def test_distilled_student_beats_the_same_student_trained_without_teacher(torch_model, data, val):
    """Same architecture, data, epochs, learning rate and seed; the student trained alone
    starts from random weights (it never sees the teacher, not even its weights)."""
    result = distill(torch_model, data, student={"widthMultiplier": WIDTH}, epochs=EPOCHS)  # API defaults
    x_tr, y_tr, _, _ = load_digits_split(0)
    torch.manual_seed(0)
    alone = train(DigitsMLP(tuple(round(w * WIDTH) for w in TEST_HIDDEN)), x_tr, y_tr, epochs=EPOCHS, seed=0)
    distilled, scratch = accuracy(result.model, val), accuracy(torch_handle(alone), val)
    assert distilled >= scratch, f"distilled {distilled:.4f} < trained alone {scratch:.4f}"
    assert accuracy(torch_model, val) - distilled <= 0.03


@pytest.fixture(scope="module")
def converged():
    """A teacher trained to convergence (train accuracy ~99.8%, the shared fixture's 12
    epochs stop at ~98%): soft targets are only worth learning from a teacher that has
    learned its training set."""
    module, train_set, val_set = train_digits_mlp(seed=0, hidden=TEST_HIDDEN, epochs=30)
    return module, MethodData(task="classification", train=train_set, calibration=train_set.take(200)), val_set


@pytest.mark.parametrize("width", [0.25, 0.5])
def test_distilled_student_matches_labels_only_training_from_the_same_init(converged, width):
    """The fair comparison: the same student (the teacher shrunk to ``width``, so both
    start from the teacher's strongest units), same transfer data, epochs, learning rate
    and seeds; the only difference is the teacher's soft targets (alpha=0 leaves plain
    cross-entropy on the labels: the soft term is weighted by zero).

    Measured through this method (digits, 10 epochs, seeds 0-4, mean val accuracy):

    ========  ===========  ==========  ==========  =====================
    width     labels only  T=1 a=0.5   T=2 a=0.5   T=4 a=0.7 (old default)
    ========  ===========  ==========  ==========  =====================
    0.25      96.93        96.93       96.44       95.85
    0.5       97.52        97.67       97.41       97.44
    ========  ===========  ==========  ==========  =====================

    T=1 matches (0.25) or beats (0.5) labels-only and is never worse on a seed; higher
    temperatures make a small student spend capacity on the teacher's ranking of the
    wrong classes. With the shared under-trained 12-epoch teacher no temperature wins
    (at width 0.5 labels-only is 0.3-0.5 points better: the student outgrows its teacher).
    """
    module, data, val = converged
    scores: dict[float, list[float]] = {0.0: [], 0.5: []}
    for seed in range(3):
        data.seed = seed
        for alpha, accs in scores.items():
            config = {"student": {"widthMultiplier": width}, "epochs": EPOCHS, "temperature": 1.0, "alpha": alpha}
            accs.append(accuracy(distill(torch_handle(module), data, **config).model, val))
    labels_only, distilled = np.mean(scores[0.0]), np.mean(scores[0.5])
    assert distilled >= labels_only, f"distilled {scores[0.5]} < labels only {scores[0.0]}"
    assert accuracy(torch_handle(module), val) - distilled <= 0.01


def test_distillation_needs_no_labels(converged):
    """Where distillation really wins: a transfer set without labels (e.g. unlabeled
    calibration inputs), which labels-only training cannot use at all."""
    module, data, val = converged
    unlabeled = MethodData(task="classification", train=Samples(data.train.features), calibration=data.calibration)
    result = distill(
        torch_handle(module), unlabeled, student={"widthMultiplier": WIDTH}, epochs=EPOCHS, temperature=1.0
    )
    assert accuracy(torch_handle(module), val) - accuracy(result.model, val) <= 0.02
    with pytest.raises(ValueError, match="needs labels"):
        get_method("prune").apply(
            torch_handle(module),
            Prune(structure="neurons", sparsity=1 - WIDTH, fineTuneEpochs=1),
            unlabeled,
        )


def test_student_from_storage_uri(tmp_path, data, val, torch_model):
    student = DigitsMLP((16,)).eval()
    program = torch.export.export(
        student,
        (),
        {"input": torch.from_numpy(batch_of(val, 4))},
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
    )
    torch.export.save(program, tmp_path / "student.pt2")
    untrained = accuracy(torch_handle(student), val)
    result = distill(
        torch_model, data, student={"storageUri": (tmp_path / "student.pt2").as_uri()}, epochs=3, learningRate=5e-3
    )
    assert result.changes["parametersAfter"] == sum(p.numel() for p in student.parameters())
    assert accuracy(result.model, val) > max(untrained + 0.3, 0.6)  # a 16-unit student after 3 epochs: ~0.74


def test_student_with_other_outputs_is_a_clear_error(tmp_path, data, val, torch_model):
    wrong = nn.Sequential(nn.Linear(64, 3)).eval()

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = wrong

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return self.body(input)

    program = torch.export.export(
        Named(),
        (),
        {"input": torch.from_numpy(batch_of(val, 4))},
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
    )
    torch.export.save(program, tmp_path / "wrong.pt2")
    with pytest.raises(ValueError, match=r"student outputs shape \(3,\).*teacher \(10,\)"):
        distill(torch_model, data, student={"storageUri": (tmp_path / "wrong.pt2").as_uri()}, epochs=1)


def test_width_needs_a_hidden_layer(data):
    with pytest.raises(ValueError, match="no hidden Linear/Conv layer.*student.storageUri"):
        distill(torch_handle(nn.Linear(64, 10)), data, student={"widthMultiplier": 0.5}, epochs=1)


def test_soft_loss_is_zero_when_student_equals_teacher():
    from modelpress.jobs.methods.distill import distillation_loss

    teacher = nn.Linear(4, 3)
    feeds = {"input": torch.randn(5, 4)}

    class Kw(nn.Module):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return teacher(input)

    loss = distillation_loss(Kw(), "classification", temperature=4.0, alpha=1.0, has_labels=False)
    assert float(loss(teacher(feeds["input"]).detach(), feeds, None)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(torch.zeros(5, 3), feeds, None)) > 0
    assert np.isfinite(float(loss(torch.zeros(5, 3), feeds, None)))
