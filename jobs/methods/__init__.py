"""Compression methods: one interface, registered by step key.

A method takes a :class:`ModelHandle`, its step config (the pydantic type from
``modelpress.api``) and :class:`MethodData`, and returns a :class:`StepResult` with a
new handle plus a small dict of what it changed. Methods never measure the result:
measurement is one module (``modelpress.jobs.measure``) so every candidate is
compared the same way. The search composes methods without knowing their insides.

Adding a method = one module in this package that defines a subclass of
:class:`Method` decorated with :func:`register` (plus its config type in
``modelpress.api`` and its tests). Modules here are discovered automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:  # keep `import modelpress.jobs.methods` light
    from pathlib import Path

    import onnx
    import torch

    from modelpress.api import Spec
    from modelpress.jobs.dataset import Samples

Stage = Literal["torch", "onnx"]


@dataclass
class ModelHandle:
    """A model between pipeline steps: a trainable torch module or an ONNX graph.

    Exactly one of ``module`` / ``onnx_model`` is set. ``input_names`` and
    ``output_names`` are the ONNX-facing names; the torch module takes its inputs as
    keyword arguments with those names (positional order = ``input_names``) and
    returns one tensor (the output named ``output_names[0]``).
    """

    input_names: list[str]
    output_names: list[str]
    module: torch.nn.Module | None = None
    onnx_model: onnx.ModelProto | None = None
    # Dynamic axes for export, per input name: {axis index: symbolic name}.
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def stage(self) -> Stage:
        return "torch" if self.module is not None else "onnx"

    def with_model(
        self, *, module: torch.nn.Module | None = None, onnx_model: onnx.ModelProto | None = None
    ) -> ModelHandle:
        """The same interface (names, dynamic axes) around a new model: what every
        method and exporter returns. Copies, so the result never aliases this handle."""
        if (module is None) == (onnx_model is None):
            raise ValueError("a ModelHandle holds exactly one of module, onnx_model")
        return ModelHandle(
            list(self.input_names),
            list(self.output_names),
            module=module,
            onnx_model=onnx_model,
            dynamic_axes={name: dict(axes) for name, axes in self.dynamic_axes.items()},
        )


@dataclass
class MethodData:
    """What a method may read: never the held-out validation split."""

    task: str  # "classification", "regression" or "embedding" (a Task member becomes its value)
    train: Samples  # transfer / fine-tuning data (labels where the dataset has them)
    calibration: Samples  # `validation.calibration.samples` samples for static quantization
    seed: int = 0
    device: str = "cpu"  # "cuda" on GPU nodes
    # distill.student.storageUri -> the local copy the download step fetched up front
    # (the compress step has no storage credentials to fetch anything itself).
    students: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Task is a str enum, so comparisons work either way, but str()/f-strings of a
        # member print "Task.x": convert once here instead of in every method.
        self.task = getattr(self.task, "value", self.task)


@dataclass
class StepResult:
    model: ModelHandle
    changes: dict[str, Any] = field(default_factory=dict)  # e.g. {"sparsity": 0.5}


class Method(ABC):
    """One compression technique. Stateless; configuration arrives per call."""

    key: ClassVar[str]  # the step key in the spec, e.g. "lowRank"
    stages: ClassVar[frozenset[Stage]]  # model stages it can work on

    @abstractmethod
    def apply(self, model: ModelHandle, config: Spec, data: MethodData) -> StepResult:
        """Return a new handle; must not mutate ``model`` (search reuses it)."""


REGISTRY: dict[str, Method] = {}
_DISCOVERED = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under its step key."""
    REGISTRY[cls.key] = cls()
    return cls


def get_method(key: str) -> Method:
    """The registered method for a step key (modules are imported on first use).

    Discovery runs once, independently of what is already registered: importing one
    method module directly must not hide the others.
    """
    global _DISCOVERED
    if not _DISCOVERED:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _DISCOVERED = True
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"no compression method registered for step {key!r}; known: {sorted(REGISTRY)}") from None
