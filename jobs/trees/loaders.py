"""Tree model sources (source.format sklearn, xgboost, lightgbm) as ONNX model handles.

A tree model becomes ONNX right when it is loaded, so it flows through the pipeline,
the gate and the modelpress-onnx runtime like any ONNX source. The file is read and
converted in a child process (:mod:`modelpress.jobs.trees.convert`): XGBoost's and
LightGBM's parsers are C++ reading a hostile file, and conversion is pure Python that
no ORT terminate flag reaches, so the child is killed at ``limits.trialTimeoutSeconds``
and a crash or an out-of-memory kill becomes a one-line error instead of the job's end.
The file's size is checked before anything reads it (``limits.maxTreeModelBytes``), and
what can be checked without the model libraries is checked here too (:func:`convert.precheck`),
its node count after parsing and before conversion (``limits.maxTreeNodes``, in the child).

The graph's interface is what the pipeline expects of its task: one float32 input
``input`` [N, features] and one output, class probabilities [N, classes] named
``probabilities`` or values [N, targets] named ``prediction`` (:func:`tree_outputs` drops
the converters' label output, and unwraps a ZipMap in ONNX sources).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from modelpress.api import Limits
from modelpress.jobs.errors import JobInputError
from modelpress.jobs.methods import ModelHandle
from modelpress.jobs.trees.convert import DESCRIPTION, EXIT_INPUT_ERROR, FIELD, INPUT_NAME, precheck

log = logging.getLogger(__name__)

ML_DOMAIN = "ai.onnx.ml"
OUTPUT_NAME = {"classification": "probabilities", "regression": "prediction"}
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
TREE_PICKLE_HINT = (
    "ModelPress never unpickles models (a pickle can run arbitrary code): save a scikit-learn model with "
    "skops.io.dump (source.format sklearn), XGBoost with save_model('model.json') (xgboost), LightGBM with "
    "save_model('model.txt') (lightgbm)"
)


def load_tree_source(path: Path, fmt: str, task: str, limits: Limits, field: str = FIELD) -> ModelHandle:
    """Read and convert a tree model file; :class:`JobInputError` for anything wrong with it."""
    precheck(path, fmt, limits, field)  # cheap refusals before a child process starts
    model = tree_outputs(_convert_in_child(path, fmt, limits, field), field)
    kind = "classification" if _is_classifier(model) else "regression"
    if task != kind:
        raise JobInputError("source.task", f"{path.name} is a {kind} model; set source.task to {kind}")
    _rename_output(model.graph, model.graph.output[0].name, OUTPUT_NAME[kind])
    log.info("converted %s model %s to ONNX: %d nodes", fmt, path.name, len(model.graph.node))
    return ModelHandle(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME[kind]], onnx_model=model)


def tree_interface(handle: ModelHandle, field: str = FIELD) -> ModelHandle:
    """An ONNX source holding a tree classifier, with its one probabilities output
    (:func:`tree_outputs`); any other model as it is."""
    model = handle.proto
    if not _is_classifier(model):
        return handle
    model = tree_outputs(model, field)
    return ModelHandle(list(handle.input_names), [model.graph.output[0].name], onnx_model=model)


def tree_outputs(model: onnx.ModelProto, field: str = FIELD) -> onnx.ModelProto:
    """A TreeEnsembleClassifier graph with only its probabilities as output.

    skl2onnx and onnxmltools emit the predicted label too (int64 or strings), and by
    default skl2onnx wraps the probabilities in a ZipMap (a sequence of maps, which
    neither the metrics nor the Triton-style server can return): the ZipMap is taken
    out and its input tensor served, the label dropped. Regressors pass unchanged.
    """
    if not _is_classifier(model):
        return model
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    outputs = []
    for out in graph.output:
        zipmap = producers.get(out.name)
        if zipmap is not None and zipmap.op_type == "ZipMap" and zipmap.domain == ML_DOMAIN:
            labels = next(a for a in zipmap.attribute if a.name.startswith("classlabels_"))
            classes = len(labels.ints) or len(labels.strings)
            outputs.append(helper.make_tensor_value_info(zipmap.input[0], TensorProto.FLOAT, ["N", classes]))
        elif out.type.tensor_type.elem_type in _FLOAT_TYPES:
            outputs.append(out)
    if len(outputs) != 1:
        raise JobInputError(
            field,
            f"the tree classifier has {len(outputs)} probability outputs (of {[o.name for o in graph.output]}); "
            "export it with one (skl2onnx/onnxmltools: label and probabilities)",
        )
    del graph.output[:]
    graph.output.extend(outputs)
    _drop_unused_nodes(graph)
    return model


def _is_classifier(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "TreeEnsembleClassifier" and n.domain == ML_DOMAIN for n in model.graph.node)


def _drop_unused_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes no graph output depends on (the label's post-processing, a ZipMap).

    Nodes are in topological order (ONNX requires it), so one backward pass finds what
    the outputs need. Graphs with subgraphs are left alone: those can read outer names
    that no node input lists. Hand-written: onnx has no dead-node pass of its own.
    """
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))


def _rename_output(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    graph.output[0].name = new


def _convert_in_child(path: Path, fmt: str, limits: Limits, field: str) -> onnx.ModelProto:
    """:func:`convert.main` in a fresh interpreter, killed at ``limits.trialTimeoutSeconds``."""
    with tempfile.TemporaryDirectory(prefix="modelpress-tree-") as tmp:
        out, error = Path(tmp) / "model.onnx", Path(tmp) / "error.json"
        argv = [sys.executable, "-m", "modelpress.jobs.trees.convert", fmt, str(path), str(out), str(error)]
        try:
            done = subprocess.run(
                [*argv, limits.model_dump_json()], capture_output=True, timeout=limits.trial_timeout_seconds
            )
        except subprocess.TimeoutExpired as e:  # subprocess.run killed the child
            raise JobInputError(
                field,
                f"reading and converting {path.name} took more than {limits.trial_timeout_seconds} s, the limit "
                "(limits.trialTimeoutSeconds)",
            ) from e
        if done.returncode == EXIT_INPUT_ERROR:
            problem = json.loads(error.read_text())
            raise JobInputError(problem["field"], problem["message"])
        if done.returncode != 0:
            log.warning("reading %s failed:\n%s", path.name, done.stderr.decode(errors="replace")[-4000:])
            code = done.returncode
            killer = next((sig.name for sig in signal.Signals if sig.value == -code), str(-code))
            how = f"was killed by {killer}" if code < 0 else f"exited with code {code}"
            raise JobInputError(
                field,
                f"reading {path.name} as {DESCRIPTION[fmt]} failed (the reader {how}); "
                f"check the file and source.format ({fmt})",
            )
        return onnx.load(str(out))
