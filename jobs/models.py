"""Loading the source model without ever running code that ships with it.

* onnx: ``onnx.load`` + ``onnx.checker`` (protobuf; no code can ride along).
* pytorch-export: ``torch.export.load(...).module()``. A .pt2 archive *can* carry
  pickled payloads that ``torch.export.load`` would unpickle with
  ``weights_only=False``, so the archive is inspected first (pickled custom/opaque
  objects are refused) and every ``torch.load`` inside runs with
  ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, which overrides the library's own choice.
* hf-transformers: delegated to :func:`modelpress.jobs.hf.load_hf_model`.

Anything that looks like a bare pickle (``torch.save``/``pickle.dump``) is refused
with a message saying how to export the model instead.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from modelpress.jobs.errors import JobInputError, first_line
from modelpress.jobs.methods import ModelHandle

log = logging.getLogger(__name__)

FIELD = "source.storageUri"
PICKLE_HINT = (
    "ModelPress never unpickles models (a pickle can run arbitrary code): export it with "
    "torch.export.save (.pt2, source.format pytorch-export) or to ONNX (source.format onnx)"
)
# The output name of a torch source (a .pt2 carries no output names): what it means by
# task, the same names as hf-transformers sources ("embedding" itself would collide with
# the value torch's ONNX exporter gives aten.embedding).
OUTPUT_NAME_BY_TASK = {"classification": "logits", "regression": "prediction", "embedding": "sentence_embedding"}


def load_source(path: Path, fmt: str, task: str, field: str = FIELD) -> ModelHandle:
    """Load the downloaded source as a :class:`ModelHandle` or raise :class:`JobInputError`."""
    if fmt == "hf-transformers":
        from modelpress.jobs.hf import load_hf_model

        try:
            return load_hf_model(path, task)
        except (ValueError, OSError) as e:  # hf.HFLoadError is a ValueError with the fix in it
            raise JobInputError(field, first_line(e, 200)) from e
    if path.is_dir():
        path = _single_file(path, field)
    _refuse_pickle(path, field)
    if fmt == "onnx":
        return load_onnx(path, field)
    if fmt == "pytorch-export":
        return load_pt2(path, task, field)
    raise JobInputError("source.format", f"unknown format {fmt!r}; use onnx, pytorch-export or hf-transformers")


def load_onnx(path: Path, field: str = FIELD) -> ModelHandle:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
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
    log.info("loaded ONNX model %s: inputs %s, outputs %s", path.name, inputs, outputs)
    return ModelHandle(input_names=inputs, output_names=outputs, onnx_model=model)


def load_pt2(path: Path, task: str, field: str = FIELD) -> ModelHandle:
    _check_pt2_archive(path, field)
    try:
        with _weights_only_loads():
            program = torch.export.load(str(path))
    except JobInputError:
        raise
    except Exception as e:
        raise JobInputError(
            field,
            f"{path.name} is not a torch.export archive ({first_line(e, 200)}); save the model with torch.export.save",
        ) from e
    args_spec, kwargs_spec = program.call_spec.in_spec.children()
    names = list(program.graph_signature.user_inputs)
    positional = names[: args_spec.num_children]
    keywords = list(kwargs_spec.context or [])
    # Exported with keywords (the usual way): the program already takes ModelHandle's convention.
    module = KeywordInputs(program.module(), positional, keywords) if positional else program.module()
    dynamic = {n: {0: "batch"} for n in positional + keywords}
    output = OUTPUT_NAME_BY_TASK.get(task, "output")
    log.info("loaded torch.export program %s: inputs %s", path.name, positional + keywords)
    return ModelHandle(input_names=positional + keywords, output_names=[output], module=module, dynamic_axes=dynamic)


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
        self.forward = types.MethodType(forward, self)

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


def _single_file(directory: Path, field: str) -> Path:
    files = [p for p in directory.iterdir() if p.is_file()]
    if len(files) != 1:
        raise JobInputError(
            field,
            f"expected one model file, found {len(files)} in {directory.name}; point storageUri at the model file",
        )
    return files[0]


def _refuse_pickle(path: Path, field: str) -> None:
    """Refuse bare pickles and torch.save archives before any parser sees them."""
    head = path.read_bytes()[:2] if path.stat().st_size else b""
    if not head:
        raise JobInputError(field, f"{path.name} is empty")
    if head[0] == 0x80 and head[1] <= 5:  # pickle protocol 2..5 header (PROTO opcode)
        raise JobInputError(field, f"{path.name} is a Python pickle; {PICKLE_HINT}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("data.pkl") for n in z.namelist()):
                raise JobInputError(field, f"{path.name} was written by torch.save (a pickle); {PICKLE_HINT}")


def _check_pt2_archive(path: Path, field: str) -> None:
    """A .pt2 may hold pickled custom/opaque objects; refuse those before loading."""
    from torch.export.pt2_archive import constants as pt2

    if not zipfile.is_zipfile(path):
        raise JobInputError(
            field,
            f"{path.name} is not a torch.export archive (.pt2 is a zip file); save the model with torch.export.save",
        )
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if not name.endswith("_config.json") or "/data/" not in name:
                continue
            config = json.loads(z.read(name)).get("config", {})
            for fqn, meta in config.items():
                entry = meta.get("path_name", "")
                pickled = meta.get("use_pickle") or entry.startswith(
                    (pt2.CUSTOM_OBJ_FILENAME_PREFIX, pt2.OPAQUE_OBJ_FILENAME_PREFIX)
                )
                if pickled:
                    raise JobInputError(field, f"{path.name} holds a pickled object ({fqn}); {PICKLE_HINT}")


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
