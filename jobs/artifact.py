"""The artifact layout: a KServe/Triton model repository with one model named "model".

::

    <output.storageUri>/<recipeHash>/
        model/1/model.onnx     the compressed model (what the modelpress-onnx runtime serves)
        model/config.pbtxt     Triton config, so kserve-tritonserver can serve it too
        report.json            every trial, measurements, hardware
        report.html            the same, readable, with a chart

Content-addressed by recipe hash: the same recipe always lands in the same place.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import onnx

MODEL_NAME = "model"
MODEL_RELPATH = "model/1/model.onnx"
CONFIG_RELPATH = "model/config.pbtxt"
# Tensor names written into config.pbtxt: the loaders refuse others (models.check_names),
# so a quote or newline in a hostile model's names can never add blocks to the config.
TRITON_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,256}")

# ONNX elem type -> Triton data type
_TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}


def write_model(out_dir: Path, model: onnx.ModelProto) -> tuple[str, int]:
    """Write model.onnx and config.pbtxt under ``out_dir``; return (sha256, bytes) of model.onnx."""
    path = out_dir / MODEL_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    path.write_bytes(data)
    (out_dir / CONFIG_RELPATH).write_text(triton_config(model))
    return hashlib.sha256(data).hexdigest(), len(data)


def triton_config(model: onnx.ModelProto) -> str:
    """A Triton onnxruntime config with explicit inputs/outputs (batch axis kept in dims).

    ``max_batch_size: 0`` tells Triton the first dimension is part of the shape, which
    matches the dynamic batch axis of our exported graphs.
    """
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    lines = [f'name: "{MODEL_NAME}"', 'backend: "onnxruntime"', "max_batch_size: 0"]
    for kind, values in (("input", inputs), ("output", list(model.graph.output))):
        entries = [_tensor(v) for v in values]
        lines.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")
    return "\n".join(lines) + "\n"


def _tensor(value: onnx.ValueInfoProto) -> str:
    if not TRITON_NAME.fullmatch(value.name):  # the loaders refuse such names: reaching here is a bug
        raise ValueError(f"tensor name {value.name[:80]!r} cannot be written into config.pbtxt")
    t = value.type.tensor_type
    dims = [str(d.dim_value) if d.HasField("dim_value") else "-1" for d in t.shape.dim]
    dtype = _TRITON_TYPES.get(t.elem_type, "TYPE_FP32")
    return f'  {{\n    name: "{value.name}"\n    data_type: {dtype}\n    dims: [ {", ".join(dims)} ]\n  }}'
