"""torch -> ONNX: the one place a torch-stage model becomes a servable graph.

We use the torch.export-based ONNX exporter (``torch.onnx.export(dynamo=True)``):
the TorchScript exporter cannot re-export modules loaded with ``torch.export.load``
(they refuse ``.train()``), and torch.export is also what ``pytorch-export`` sources
are made with, so one tracer covers user models, our surgery results and BERT-style
encoders alike.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch
from modelpress.jobs.methods import ModelHandle


def to_onnx(handle: ModelHandle, sample: dict[str, np.ndarray], opset: int = 17) -> ModelHandle:
    """Export ``handle.module`` with its input/output names and dynamic axes.

    ``sample`` is one batch of real inputs (numpy, keyed by input name). The returned
    handle is an onnx-stage handle with the same names; ``handle`` is not modified.
    """
    if handle.module is None:
        raise ValueError("to_onnx needs a torch-stage model handle (this one is already ONNX)")
    missing = [n for n in handle.input_names if n not in sample]
    if missing:
        raise ValueError(f"export sample lacks inputs {missing}; the model takes {handle.input_names}")
    kwargs = {name: torch.from_numpy(np.ascontiguousarray(widen_dynamic_axes(sample[name], handle.dynamic_axes.get(name, {}))))
              for name in handle.input_names}
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = {
        name: {axis: dims.setdefault(symbol, torch.export.Dim(dim_identifier(symbol))) for axis, symbol in axes.items()}
        for name, axes in ((n, handle.dynamic_axes.get(n, {})) for n in handle.input_names)
    }
    module = handle.module
    with warnings.catch_warnings():
        # The exporter warns about opset conversion and optional torchvision ops; noise for us.
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                (),
                kwargs=kwargs,
                input_names=list(handle.input_names),
                output_names=list(handle.output_names),
                dynamic_shapes=dynamic_shapes if any(dynamic_shapes.values()) else None,
                opset_version=opset,
                dynamo=True,
                verbose=False,
                optimize=True,
            )
        except Exception as exc:  # the exporter raises many private types; give one readable error
            if "specialized" in str(exc) or "Constraints violated" in str(exc):
                raise ValueError(
                    "the model fixes a dimension that dynamic_axes declares dynamic "
                    f"({handle.dynamic_axes}); a pytorch-export source must be exported with "
                    "dynamic_shapes, e.g. {'input': {0: torch.export.Dim('batch')}}"
                ) from exc
            raise ValueError(f"could not export the model to ONNX: {str(exc).splitlines()[0]}") from exc
    model = program.model_proto
    _name_dynamic_dims(model, handle)
    onnx.checker.check_model(model)
    return ModelHandle(
        input_names=list(handle.input_names),
        output_names=list(handle.output_names),
        onnx_model=model,
        dynamic_axes={k: dict(v) for k, v in handle.dynamic_axes.items()},
    )


def widen_dynamic_axes(array: np.ndarray, axes: dict[int, str]) -> np.ndarray:
    """Repeat size-1 dynamic axes to 2: torch.export specializes sizes 0 and 1."""
    for axis in axes:
        if array.shape[axis] == 1:
            array = np.concatenate([array, array], axis=axis)
    return array


def dim_identifier(symbol: str) -> str:
    """torch.export.Dim names must be Python identifiers."""
    cleaned = "".join(c if c.isalnum() else "_" for c in symbol)
    return cleaned if cleaned[:1].isalpha() else f"d_{cleaned}"


def _name_dynamic_dims(model: onnx.ModelProto, handle: ModelHandle) -> None:
    """Rename the exporter's symbols (s0, s31, ...) to the names in ``dynamic_axes``.

    Serving clients and our own measurement read these names; the exporter only keeps
    them when it can, so we rename every occurrence of each symbol consistently.
    """
    rename: dict[str, str] = {}
    for value in model.graph.input:
        axes = handle.dynamic_axes.get(value.name, {})
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in axes and dim.dim_param:
                rename[dim.dim_param] = axes[axis]
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
