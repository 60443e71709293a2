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

from modelpress.jobs.errors import first_line
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
    kwargs = {
        name: torch.from_numpy(
            np.ascontiguousarray(widen_dynamic_axes(sample[name], handle.dynamic_axes.get(name, {})))
        )
        for name in handle.input_names
    }
    dynamic_shapes = export_dynamic_shapes(handle)
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
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,
                optimize=True,
            )
        except Exception as exc:  # the exporter raises many private types; give one readable error
            raise ValueError(f"could not export the model to ONNX: {first_line(exc)}") from exc
    assert program is not None  # torch.onnx.export returns None only without dynamo=True
    model = program.model_proto
    _name_dynamic_dims(model, handle)
    _check_dynamic(model, handle, kwargs)
    onnx.checker.check_model(model)
    return handle.with_model(onnx_model=model)


def widen_dynamic_axes(array: np.ndarray, axes: dict[int, str]) -> np.ndarray:
    """Repeat size-1 dynamic axes to 2: torch.export specializes sizes 0 and 1."""
    for axis in axes:
        if array.shape[axis] == 1:
            array = np.concatenate([array, array], axis=axis)
    return array


def export_dynamic_shapes(handle: ModelHandle) -> dict[str, dict[int, object]] | None:
    """torch.export ``dynamic_shapes`` for the handle's dynamic axes.

    ``Dim.AUTO`` rather than named Dims: torch then infers ranges (BERT's sequence axis
    is capped at its 512 positions) and equalities (input_ids and attention_mask share
    one length) itself; we check afterwards that every declared axis stayed dynamic.
    """
    shapes = {
        name: {axis: torch.export.Dim.AUTO for axis in handle.dynamic_axes.get(name, {})} for name in handle.input_names
    }
    return shapes if any(shapes.values()) else None


def _check_dynamic(model: onnx.ModelProto, handle: ModelHandle, kwargs: dict[str, torch.Tensor]) -> None:
    """Run the graph once with every dynamic axis one longer than traced.

    A model that bakes a size into its computation (a reshape to the traced batch size)
    exports "successfully" and only fails when served; catch that here, with the fix.
    """
    import onnxruntime as ort

    if not any(handle.dynamic_axes.get(n) for n in handle.input_names):
        return
    feeds = {}
    for name, tensor in kwargs.items():
        array = tensor.numpy()
        for axis in handle.dynamic_axes.get(name, {}):
            array = np.concatenate([array, np.take(array, [-1], axis=axis)], axis=axis)
        feeds[name] = array
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise ValueError(
            f"the exported model only runs at the traced sizes of its dynamic axes {handle.dynamic_axes}: "
            f"{first_line(exc)}; remove hard-coded sizes (e.g. reshape(4, ...) -> "
            "reshape(-1, ...)) from the model, and export pytorch-export sources with dynamic_shapes"
        ) from exc


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
