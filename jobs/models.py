"""Loading the source model without ever running code that ships with it.

* onnx: ``onnx.load`` + ``onnx.checker`` (protobuf; no code can ride along). External
  tensor data is read only from files inside the model's folder, and never left for
  onnxruntime to resolve (:func:`_load_external_data`).
* pytorch-export: ``torch.export.load(...).module()`` on a clean copy of the archive
  written by :func:`modelpress.jobs.safe_pt2.clean_copy` (torch's loader evaluates
  strings and unpickles payloads from the file; the copy holds neither), with every
  ``torch.load`` inside forced to ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` as a second layer.
* hf-transformers: delegated to :func:`modelpress.jobs.hf.load_hf_model`.
* sklearn, xgboost, lightgbm: read without pickle and converted to ONNX by
  :func:`modelpress.jobs.trees.loaders.load_tree_source`; ONNX sources holding a tree
  classifier keep only its probabilities output (:func:`~modelpress.jobs.trees.loaders.tree_interface`).

Input and output names must fit the Triton config they end up in (:func:`check_names`).
Anything that looks like a bare pickle (``torch.save``/``pickle.dump``) is refused
with a message saying how to export the model instead.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import tempfile
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from modelpress.api import ALL_FORMATS, TREE_FORMATS, Limits
from modelpress.jobs import safe_pt2
from modelpress.jobs.errors import JobInputError, first_line
from modelpress.jobs.methods import ModelHandle
from modelpress.jobs.safe_pt2 import PICKLE_HINT
from modelpress.jobs.trees.loaders import TREE_PICKLE_HINT, load_tree_source, tree_interface

log = logging.getLogger(__name__)

FIELD = "source.storageUri"
# The output name of a torch source (a .pt2 carries no output names): what it means by
# task, the same names as hf-transformers sources ("embedding" itself would collide with
# the value torch's ONNX exporter gives aten.embedding).
OUTPUT_NAME_BY_TASK = {"classification": "logits", "regression": "prediction", "embedding": "sentence_embedding"}


def load_source(
    path: Path, fmt: str, task: str, field: str = FIELD, uri: str | None = None, limits: Limits | None = None
) -> ModelHandle:
    """Load the downloaded source as a :class:`ModelHandle` or raise :class:`JobInputError`.

    ``uri``: what the user wrote (the field's storageUri); errors show it instead of the
    job's scratch path, which means nothing to them. ``limits``: the spec's (defaults when
    None), bounding what a tree model may cost to read.
    """
    if fmt == "hf-transformers":
        from modelpress.jobs.hf import load_hf_model

        try:
            return load_hf_model(path, task)
        except JobInputError as e:
            raise JobInputError(e.field, _as_uri(e.message, path, uri)) from e
        except (ValueError, OSError) as e:  # hf.HFLoadError is a ValueError with the fix in it
            raise JobInputError(field, _as_uri(first_line(e, 200), path, uri)) from e
    if path.is_dir():
        path = _single_file(path, field)
    _refuse_pickle(path, field, TREE_PICKLE_HINT if fmt in TREE_FORMATS else PICKLE_HINT)
    if fmt == "onnx":
        return tree_interface(load_onnx(path, field), field)
    if fmt == "pytorch-export":
        return load_pt2(path, task, field)
    if fmt in TREE_FORMATS:
        try:
            return load_tree_source(path, fmt, task, limits or Limits(), field)
        except JobInputError as e:
            raise JobInputError(e.field, _as_uri(e.message, path, uri)) from e
    raise JobInputError("source.format", f"unknown format {fmt!r}; use one of {', '.join(ALL_FORMATS)}")


def load_onnx(path: Path, field: str = FIELD) -> ModelHandle:
    """Load an ONNX file with its external data checked and read in (see :func:`_load_external_data`)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        _load_external_data(model, path.parent, path.name, field)
        onnx.checker.check_model(model)
    except JobInputError:
        raise
    except Exception as e:
        raise JobInputError(
            field,
            f"{path.name} is not a valid ONNX model ({first_line(e, 200)}); "
            "re-export it or set source.format to the model's real format",
        ) from e
    if not model.graph.output:
        raise JobInputError(field, f"{path.name} has no graph outputs")
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    outputs = [o.name for o in model.graph.output]
    check_names(inputs, field, "input")
    check_names(outputs, field, "output")
    log.info("loaded ONNX model %s: inputs %s, outputs %s", path.name, inputs, outputs)
    return ModelHandle(input_names=inputs, output_names=outputs, onnx_model=model)


def check_names(names: list[str], field: str, kind: str) -> None:
    """Refuse tensor names the Triton config could not hold as they are (quotes and newlines
    would end the quoted string and add blocks of their own)."""
    from modelpress.jobs.artifact import TRITON_NAME

    for name in names:
        if not TRITON_NAME.fullmatch(name):
            raise JobInputError(
                field,
                f"the model's {kind} name {name[:80]!r} has characters outside {TRITON_NAME.pattern} "
                f"(names are written into the served model's config.pbtxt); rename the {kind}",
            )


def _load_external_data(model: Any, model_dir: Path, name: str, field: str) -> None:
    """Read external tensor data into the model, only from files inside the model's folder.

    onnxruntime, given a model as bytes, resolves a relative location against the
    process's working directory, and ``onnx.load`` does not read sparse tensors' external
    data at all: so every tensor (initializers, sparse initializers, node attributes, in
    subgraphs and functions) is checked here and read in, and what is served holds no
    external reference. Sparse tensors with external data are refused (onnx cannot read them).
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor

    base = model_dir.resolve()
    for tensor, sparse in _all_tensors(model):
        external = tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0
        if not external:
            continue
        if sparse:
            raise JobInputError(
                field, f"{name}: sparse tensor {tensor.name[:80]!r} keeps its data in an external file (not supported)"
            )
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        parts = re.split(r"[/\\]", location)
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or ".." in parts or not target.is_relative_to(base):
            raise JobInputError(
                field,
                f"{name}: tensor {tensor.name[:80]!r} reads external data from {location[:120]!r}; "
                "external data must be a file beside the model (no absolute path, no '..', no link out)",
            )
        if not target.is_file():
            raise JobInputError(
                field, f"{name}: external data file {location[:120]!r} of tensor {tensor.name[:80]!r} is missing"
            )
        load_external_data_for_tensor(tensor, str(base))


def _all_tensors(model: Any) -> Iterator[tuple[Any, bool]]:
    """(tensor, is part of a sparse tensor) for every tensor the model holds, at any depth."""
    stack = [model.graph, *model.functions]
    while stack:
        graph = stack.pop()
        if hasattr(graph, "initializer"):  # a GraphProto (FunctionProtos have only nodes)
            yield from ((t, False) for t in graph.initializer)
            yield from _sparse(graph.sparse_initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t, False
                yield from ((t, False) for t in attribute.tensors)
                yield from _sparse([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else [])
                yield from _sparse(attribute.sparse_tensors)
                stack.extend([attribute.g] if attribute.HasField("g") else [])
                stack.extend(attribute.graphs)


def _sparse(tensors: Any) -> Iterator[tuple[Any, bool]]:
    for sparse in tensors:
        yield sparse.values, True
        yield sparse.indices, True


def load_pt2(path: Path, task: str, field: str = FIELD) -> ModelHandle:
    """Load a .pt2 through :func:`safe_pt2.clean_copy`: torch only ever reads the validated copy."""
    with tempfile.TemporaryDirectory(prefix="modelpress-pt2-") as tmp:
        clean = safe_pt2.clean_copy(path, Path(tmp) / "model.pt2", field)
        try:
            with _weights_only_loads():
                program = torch.export.load(str(clean))
        except Exception as e:
            raise JobInputError(
                field,
                f"{path.name} is not a torch.export archive ({first_line(e, 200)}); "
                "save the model with torch.export.save",
            ) from e
    program.example_inputs = _stand_in_inputs(program)
    args_spec, kwargs_spec = program.call_spec.in_spec.children()
    names = list(program.graph_signature.user_inputs)
    positional = names[: args_spec.num_children]
    keywords = list(kwargs_spec.context or [])
    check_names(positional + keywords, field, "input")
    # Exported with keywords (the usual way): the program already takes ModelHandle's convention.
    module = KeywordInputs(program.module(), positional, keywords) if positional else program.module()
    dynamic = {n: {0: "batch"} for n in positional + keywords}
    output = OUTPUT_NAME_BY_TASK.get(task, "output")
    log.info("loaded torch.export program %s: inputs %s", path.name, positional + keywords)
    return ModelHandle(input_names=positional + keywords, output_names=[output], module=module, dynamic_axes=dynamic)


def _stand_in_inputs(program: torch.export.ExportedProgram) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Zeros in the traced input shapes, structured like the program's inputs.

    torch installs a program's shape guards (``guards_code``: the shapes its graph is
    right for) only when the program has example inputs, and the clean copy drops those
    (a pickle); only their structure matters for the guards, so this rebuilds them.
    """
    placeholders = {n.name: n for n in program.graph.find_nodes(op="placeholder")}
    values = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val")
        if isinstance(value, torch.Tensor):
            shape = [d if isinstance(d, int) else (d.node.hint or 1) for d in value.shape]
            value = torch.zeros(shape, dtype=value.dtype)
        values.append(value)
    return torch.utils._pytree.tree_unflatten(values, program.call_spec.in_spec)


class KeywordInputs(torch.nn.Module):
    """Adapts an exported program to the ModelHandle calling convention.

    ``ExportedProgram.module()`` only accepts inputs the way they were passed at export
    time (positionally or by keyword); methods call with the input names as keywords
    or positionally in ``input_names`` order, so this maps both onto the program.
    """

    def __init__(self, program: torch.nn.Module, positional: list[str], keywords: list[str]) -> None:
        super().__init__()
        self.program = program
        self.positional = positional
        self.keywords = keywords
        # torch.export binds inputs (and dynamic_shapes) by the parameter names of
        # forward, so give this instance's forward the program's input names.
        names = ["self", *positional, *keywords]
        params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]

        def forward(this: KeywordInputs, *args: Any, **kwargs: Any) -> Any:
            return KeywordInputs.forward(this, *args, **kwargs)

        forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        self.forward = types.MethodType(forward, self)  # type: ignore[method-assign]  # per instance, on purpose

    def train(self, mode: bool = True) -> KeywordInputs:
        """Exported programs refuse ``train()`` (their graph is fixed at export time:
        dropout/batch-norm behave as exported), so only this wrapper's flag changes."""
        self.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        values = dict(zip(self.positional + self.keywords, args, strict=False))
        values.update(kwargs)
        out = self.program(*(values[n] for n in self.positional), **{k: values[k] for k in self.keywords})
        return out[0] if isinstance(out, (tuple, list)) else out


def _as_uri(message: str, path: Path, uri: str | None) -> str:
    """``message`` with the local download folder written as the user's URI."""
    shown = uri.rstrip("/") if uri else path.name
    for local in sorted({str(path.resolve()), str(path)}, key=len, reverse=True):  # longest first
        message = message.replace(local, shown)
    return message


def _single_file(directory: Path, field: str) -> Path:
    files = [p for p in directory.iterdir() if p.is_file()]
    if len(files) != 1:
        raise JobInputError(
            field,
            f"expected one model file, found {len(files)} in {directory.name}; point storageUri at the model file",
        )
    return files[0]


def _refuse_pickle(path: Path, field: str, hint: str = PICKLE_HINT) -> None:
    """Refuse bare pickles and torch.save archives before any parser sees them."""
    with path.open("rb") as f:
        head = f.read(2)
    if not head:
        raise JobInputError(field, f"{path.name} is empty")
    if len(head) == 2 and head[0] == 0x80 and head[1] <= 5:  # pickle protocol 2..5 header (PROTO opcode)
        raise JobInputError(field, f"{path.name} is a Python pickle; {hint}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("data.pkl") for n in z.namelist()):
                raise JobInputError(field, f"{path.name} was written by torch.save (a pickle); {hint}")


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every torch.load inside to the weights-only unpickler."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old
