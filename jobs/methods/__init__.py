"""Compression methods: one interface, registered by step key.

A method takes a :class:`ModelHandle`, its step config (the pydantic type from
``modelpress.api``) and :class:`MethodData`, and returns a :class:`StepResult` with a
new handle plus a small dict of what it changed. Methods never measure the result:
measurement is one module (``modelpress.jobs.measure``) so every candidate is
compared the same way. The search composes methods without knowing their insides.

Each method also owns its search space (as Olive's passes declare theirs): which
milder or alternative settings the accuracy-aware search may try (:meth:`Method.ladder`),
and, when it has one, how to rank the nodes it changes by sensitivity so the search can
leave the most sensitive ones untouched (:meth:`Method.rankable_nodes`,
:meth:`Method.leave_out`). The pipeline never branches on method names.

Adding a method = one module in this package that defines a subclass of
:class:`Method` decorated with :func:`register` (plus its config type in
``modelpress.api`` and its tests). Modules here are discovered automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:  # keep `import modelpress.jobs.methods` light
    from pathlib import Path

    import onnx
    import torch

    from modelpress.api import Spec
    from modelpress.jobs.dataset import Samples

Stage = Literal["torch", "onnx"]
# A method's config type (``modelpress.api``): subclasses are ``Method[Quantize]`` etc.,
# so their hooks take their own config type and type-check as overrides.
ConfigT = TypeVar("ConfigT", bound="Spec")


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

    @property
    def proto(self) -> onnx.ModelProto:
        """The ONNX graph, where the caller knows the handle is past export (ValueError otherwise)."""
        if self.onnx_model is None:
            raise ValueError("the model is still a torch module here; export it to ONNX first")
        return self.onnx_model

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


@dataclass(frozen=True)
class Variant:
    """One setting of one step in the search: its config, how much milder than asked it
    is (``level``: the search skips a candidate once a less mild one passed), and how many
    of the most sensitive nodes (ranked by the search, see :meth:`Method.rankable_nodes`)
    the step leaves untouched (``exclude_top``; e.g. quantize keeps them in float).
    ``rung``: the position in the step's ladder (0 = as asked), set by the search."""

    key: str
    config: Spec
    level: int = 0
    exclude_top: int = 0
    rung: int = 0

    def describe(self) -> dict[str, Any]:
        return {self.key: self.config.model_dump(by_alias=True, mode="json")}


@dataclass(frozen=True)
class SearchContext:
    """What a method's ladder may depend on besides its own config."""

    # The spec has validation.calibration: settings that need calibration data (e.g.
    # quantize smoothing) are valid recipes on their own, so the ladder may offer them.
    calibrated: bool = False


class Method(ABC, Generic[ConfigT]):
    """One compression technique. Stateless; configuration arrives per call.

    Only :meth:`apply` is required; the search hooks default to "no search space".
    """

    key: ClassVar[str]  # the step key in the spec, e.g. "lowRank"
    stages: ClassVar[frozenset[Stage]]  # model stages it can work on

    @abstractmethod
    def apply(self, model: ModelHandle, config: ConfigT, data: MethodData) -> StepResult:
        """Return a new handle; must not mutate ``model`` (search reuses it)."""

    def ladder(self, config: ConfigT, context: SearchContext) -> list[Variant]:
        """The settings the search tries after ``config`` as asked, in order (build them
        with :meth:`variant`). Default: none, the search keeps this step as asked."""
        return []

    def variant(self, config: ConfigT, level: int = 0, exclude_top: int = 0) -> Variant:
        return Variant(self.key, config, level=level, exclude_top=exclude_top)

    def prepare(self, model: ModelHandle) -> ModelHandle:
        """Work that every variant of this step would repeat on the same input (e.g.
        quantize's graph pre-processing); the search does it once per input and passes the
        result to :meth:`apply` and the node ranking. Default: nothing to share."""
        return model

    def rankable_nodes(self, model: ModelHandle, config: ConfigT) -> list[str]:
        """Nodes ``config`` would change that it could leave untouched, the ones most worth
        ranking first (the search ranks at most a few). Default: none, so variants of this
        method never set ``exclude_top``."""
        return []

    def leave_out(self, config: ConfigT, nodes: Sequence[str], among: Sequence[str]) -> ConfigT:
        """``config`` changed so the step leaves ``nodes`` untouched. ``among``: the nodes
        under consideration; raise ValueError when leaving ``nodes`` out changes none of them."""
        raise NotImplementedError(f"{self.key} does not rank nodes")


def seed_everything(seed: int) -> None:
    """Seed every global random generator a method may draw from (Python, numpy, torch).

    The search reuses cached step results in whatever order trials need them, so each
    step is seeded on its own: the same step on the same input gives the same model.
    """
    import torch  # here, not at module level: keep `import modelpress.jobs.methods` light

    random.seed(seed)
    np.random.seed(seed)  # the legacy global generator: libraries a method calls may draw from it
    torch.manual_seed(seed)


REGISTRY: dict[str, Method[Any]] = {}
_DISCOVERED = False


M = TypeVar("M", bound=Method[Any])


def register(cls: type[M]) -> type[M]:
    """Class decorator: make a method available under its step key."""
    REGISTRY[cls.key] = cls()
    return cls


def get_method(key: str) -> Method[Any]:
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
