"""The cross-field rules of a spec (``api.semantic_problems``), each one alone, in full.

The same (field, message) pairs reach ``modelpress validate``, the admission error and
the operator's SpecValid condition, so each rule is pinned by its exact output, and the
spec that is one change away from breaking it is pinned to pass.
"""

from __future__ import annotations

import pytest

from modelpress.api import (
    DISTILL_STUDENT_MESSAGE,
    CompressedModelSpec,
    Compression,
    Source,
    Validation,
    semantic_problems,
)

SOURCE = {"storageUri": "s3://models/m.onnx", "format": "onnx", "task": "classification"}
VALIDATION = {
    "dataset": {"storageUri": "s3://data/dev.npz", "format": "npz"},
    "metric": "accuracy",
    "maxAccuracyDrop": {"absolute": 0.01},
}
CALIBRATION = {"calibration": {"storageUri": "s3://data/calib.npz", "format": "npz"}}
STRUCTURED = (
    "structured pruning needs a torch source (pytorch-export or hf-transformers); for onnx use structure: unstructured"
)


def problems(steps: list[dict], source: dict | None = None, validation: dict | None = None) -> list[tuple[str, str]]:
    """The rules' verdict on a spec whose sections are each valid on their own (the
    whole spec is built without its own validator, which would raise on the first rule)."""
    spec = CompressedModelSpec.model_construct(
        source=Source.model_validate({**SOURCE, **(source or {})}),
        compression=Compression.model_validate({"steps": steps}),
        validation=Validation.model_validate({**VALIDATION, **(validation or {})}),
    )
    return semantic_problems(spec)


@pytest.mark.parametrize(
    ("steps", "validation"),
    [
        ([{"quantize": {"mode": "dynamic"}}], None),
        ([{"quantize": {"mode": "static"}}], CALIBRATION),
        ([{"quantize": {"mode": "dynamic", "smoothing": 0.5}}], CALIBRATION),
        ([{"prune": {"sparsity": 0.5}}, {"lowRank": {"energy": 0.9}}, {"quantize": {}}], None),
    ],
)
def test_a_spec_one_change_from_each_rule_has_no_problem(steps, validation) -> None:
    assert problems(steps, validation=validation) == []


def test_static_quantization_needs_calibration() -> None:
    assert problems([{"quantize": {"mode": "static"}}]) == [
        ("validation.calibration", "static quantization needs calibration data: set validation.calibration")
    ]


def test_smoothing_needs_calibration() -> None:
    assert problems([{"quantize": {"mode": "dynamic", "smoothing": 0.5}}]) == [
        ("validation.calibration", "quantize.smoothing needs calibration data: set validation.calibration")
    ]


@pytest.mark.parametrize(
    ("task", "metric", "allowed"),
    [
        ("regression", "accuracy", "mse"),
        ("classification", "mse", "accuracy, top5, f1"),
        ("embedding", "f1", "cosine, mse"),
    ],
)
def test_the_metric_must_fit_the_task(task: str, metric: str, allowed: str) -> None:
    found = problems([{"quantize": {}}], source={"task": task}, validation={"metric": metric})
    assert found == [("validation.metric", f"metric {metric!r} does not fit task {task!r}; use one of {allowed}")]


def test_distillation_into_a_shrunk_teacher_needs_a_trainable_source() -> None:
    steps = [{"prune": {"sparsity": 0.5}}, {"distill": {"student": {"widthMultiplier": 0.5}}}]
    assert problems(steps) == [("compression.steps[1].distill.student", DISTILL_STUDENT_MESSAGE)]
    assert "pytorch-export or hf-transformers" in DISTILL_STUDENT_MESSAGE and "trees or mlp" in DISTILL_STUDENT_MESSAGE
    assert problems(steps, source={"format": "pytorch-export", "storageUri": "s3://models/m.pt2"}) == []


@pytest.mark.parametrize("fmt", ["onnx", "xgboost", "sklearn", "pytorch-export"])
@pytest.mark.parametrize("student", [{"trees": {"kind": "randomForest"}}, {"mlp": {"hidden": [16]}}])
def test_distillation_into_trees_or_an_mlp_takes_any_source(fmt: str, student: dict) -> None:
    assert problems([{"distill": {"student": student}}], source={"format": fmt}) == []


def test_structured_pruning_needs_a_torch_source() -> None:
    steps = [{"lowRank": {"energy": 0.9}}, {"prune": {"sparsity": 0.5, "structure": "channels"}}]
    assert problems(steps) == [("compression.steps[1].prune.structure", STRUCTURED)]
    assert problems(steps, source={"format": "hf-transformers", "storageUri": "s3://models/bert/"}) == []
    assert problems([{"prune": {"sparsity": 0.5, "structure": "unstructured"}}]) == []


def test_nothing_follows_quantize() -> None:
    steps = [{"prune": {"sparsity": 0.5}}, {"quantize": {}}, {"lowRank": {"energy": 0.9}}, {"prune": {"sparsity": 0.2}}]
    assert problems(steps) == [
        ("compression.steps[2]", "lowRank cannot follow quantize: put quantize last"),
        ("compression.steps[3]", "prune cannot follow quantize: put quantize last"),
    ]


def test_every_broken_rule_is_reported_at_once() -> None:
    steps = [{"quantize": {"mode": "static", "smoothing": 0.5}}, {"distill": {"student": {"widthMultiplier": 0.5}}}]
    assert [field for field, _ in problems(steps, validation={"metric": "mse"})] == [
        "validation.calibration",
        "validation.calibration",
        "validation.metric",
        "compression.steps[1].distill.student",
        "compression.steps[1]",
    ]
