"""Knowledge distillation: the incoming model teaches a smaller student.

Student: the teacher with every hidden Linear/Conv width scaled by ``widthMultiplier``
(the same dependency-aware shrinking as structured pruning, so input and output dims
stay and the student starts from the teacher's largest-magnitude units), or a
pytorch-export model from ``student.storageUri``. Those two need a torch teacher; a
``trees`` or ``mlp`` student learns any tabular teacher, ONNX or torch, neural or trees
(:mod:`~modelpress.jobs.methods.distill_tabular`).

Loss (Hinton et al.): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) *
CE(s, labels)`` for classification; regression and embedding models have no logits to
soften, so the soft term is the MSE to the teacher's outputs (plus MSE to the labels
for regression when the data has them).

Temperature: a student much smaller than its teacher learns best at T=1 (measured on
digits, tests/methods/test_distill.py: T=1 matches or beats training the same student
on labels alone; T=4 with alpha 0.7, the old defaults, cost up to one accuracy point,
the student spending capacity on the teacher's ranking of wrong classes). Distillation's clear win is a transfer set
without labels, which the teacher labels and label-only fine-tuning cannot use.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from modelpress.api import Distill
from modelpress.jobs.dataset import collate
from modelpress.jobs.errors import StepInputError
from modelpress.jobs.methods import Method, MethodData, ModelHandle, StepResult, register
from modelpress.jobs.methods import _torch_graph as tg

STUDENT_FIELD = "distill.student.storageUri"


@register
class DistillMethod(Method[Distill]):
    key = "distill"
    # onnx: trees and mlp students only need the teacher's outputs (a torch teacher stays torch).
    stages = frozenset({"torch", "onnx"})

    def apply(self, model: ModelHandle, config: Distill, data: MethodData) -> StepResult:
        if not config.student.needs_torch:
            from modelpress.jobs.methods.distill_tabular import distill_tabular

            return distill_tabular(model, config, data)
        if model.stage == "onnx":
            raise StepInputError(
                "student.widthMultiplier and student.storageUri train a torch copy of the teacher, and the model "
                "is ONNX here: distill before the steps that make it ONNX, or use a trees or mlp student"
            )
        teacher = tg.frozen(tg.graph_module(model, data.train))  # a private copy: the handle is never trained
        if config.student.width_multiplier is not None:
            student, widths = _shrunk_student(teacher, config.student.width_multiplier)
        else:
            assert config.student.storage_uri is not None  # the API sets exactly one of the two
            student, widths = _loaded_student(model, config.student.storage_uri, data), {}
        _check_compatible(teacher, student, data)
        loss = distillation_loss(teacher, data.task, config.temperature, config.alpha, data.train.labels is not None)
        teacher.to(data.device)  # it runs on every batch next to the student
        tg.fit(
            student,
            data.train,
            data.task,
            config.epochs,
            config.learning_rate,
            data.seed,
            loss_fn=loss,
            device=data.device,
        )
        teacher.to("cpu")
        changes = {
            "parametersBefore": tg.count_parameters(teacher),
            "parametersAfter": tg.count_parameters(student),
            "widths": widths,
            "epochs": config.epochs,
            "temperature": config.temperature,
            "alpha": config.alpha,
        }
        return StepResult(model.with_model(module=student), changes)


def _shrunk_student(teacher: fx.GraphModule, width: float) -> tuple[nn.Module, dict[str, list[int]]]:
    student = tg.copy_module(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    pairs = tg.prunable_pairs(student, ("linear", "conv"))
    if not pairs:
        raise ValueError(
            "distill.student.widthMultiplier: the model has no hidden Linear/Conv layer that feeds another "
            "one through elementwise ops, so there is no width to scale; set student.storageUri to your own student"
        )
    return student, tg.shrink_pairs(student, pairs, width)


def _loaded_student(model: ModelHandle, uri: str, data: MethodData) -> nn.Module:
    """Load the pytorch-export student the download step fetched (``data.students``) with the job's loader."""
    from modelpress.jobs.models import load_source

    path = data.students.get(uri)
    if path is None:  # the pipeline fetches every student a spec names before compressing
        raise RuntimeError(f"{STUDENT_FIELD}: {uri} was not downloaded before compression")
    loaded = load_source(path, "pytorch-export", data.task, STUDENT_FIELD)
    if sorted(loaded.input_names) != sorted(model.input_names):
        raise ValueError(
            f"{STUDENT_FIELD}: the student takes inputs {loaded.input_names}, "
            f"the teacher {model.input_names}; export the student with the same input names"
        )
    student = tg.graph_module(model.with_model(module=loaded.module), data.train)
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def _check_compatible(teacher: nn.Module, student: nn.Module, data: MethodData) -> None:
    if len(data.train) == 0:
        raise ValueError("distill needs training samples (the validation dataset's transfer split)")
    sample = {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in collate(data.train.features[:2], data.train.pad_values).items()
    }
    with torch.no_grad():
        t_shape, s_shape = tuple(teacher(**sample).shape), tuple(student(**sample).shape)
    if t_shape != s_shape:
        raise ValueError(
            f"{STUDENT_FIELD}: the student outputs shape {s_shape[1:]} per sample, the teacher "
            f"{t_shape[1:]}; the student must predict the same thing"
        )


def distillation_loss(teacher: nn.Module, task: str, temperature: float, alpha: float, has_labels: bool) -> tg.LossFn:
    """The per-batch loss for ``tg.fit``; the teacher runs on the same batch without grads."""
    t2 = temperature * temperature
    match_teacher = tg.match_outputs(teacher)

    def loss(student_out: torch.Tensor, feeds: dict[str, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        if task != "classification":  # no logits to soften: match the teacher's outputs
            soft = match_teacher(student_out, feeds, labels)
            if task == "regression" and has_labels and labels is not None:
                hard = nn.functional.mse_loss(student_out, labels.to(student_out.dtype).reshape(student_out.shape))
                return alpha * soft + (1 - alpha) * hard
            return soft
        with torch.no_grad():
            teacher_out = teacher(**feeds)
        soft = (
            nn.functional.kl_div(
                nn.functional.log_softmax(student_out / temperature, dim=-1),
                nn.functional.log_softmax(teacher_out / temperature, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
            * t2
        )
        if not has_labels or labels is None:
            return soft
        return alpha * soft + (1 - alpha) * nn.functional.cross_entropy(student_out, labels.long())

    return loss
