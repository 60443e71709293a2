"""Reading a tree model file and converting it to ONNX: what the child process of
:mod:`modelpress.jobs.trees.loaders` runs (``python -m modelpress.jobs.trees.convert``).

Each format is read by its own library, never through pickle:

* sklearn: ``skops.io.load`` with an explicit list of trusted types (:data:`SKOPS_TYPES`),
  after every type the file's schema names was checked against that list;
* xgboost: ``xgboost.Booster.load_model`` on the bytes of a JSON or UBJSON model (the
  legacy binary format is refused: it is not what ``save_model`` writes today);
* lightgbm: ``lightgbm.Booster(model_str=...)`` on the text format, whose header is checked
  first (:func:`_lightgbm_header`).

The parsed model's size (trees, nodes) is checked against ``limits.maxTreeNodes`` before it
is converted (skl2onnx for scikit-learn, onnxmltools for XGBoost and LightGBM): conversion
time and memory grow with the node count. The converted model records whether its library
says it is a forest or boosted (:func:`modelpress.jobs.trees.ensemble.mark`), which ensemble
pruning reads. This module imports no torch, so the child starts fast.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from modelpress.api import Limits
from modelpress.jobs.errors import JobInputError, first_line
from modelpress.jobs.trees.ensemble import find_node, mark

FIELD = "source.storageUri"
INPUT_NAME = "input"
# What each format must be, for the message when a file is not that.
DESCRIPTION = {
    "sklearn": "a scikit-learn tree model saved with skops.io.dump",
    "xgboost": "an XGBoost model saved with save_model as JSON (.json) or UBJSON (.ubj)",
    "lightgbm": "a LightGBM text model (Booster.save_model)",
}

# The loss objects a fitted gradient-boosting model holds (each in its Python and its Cython form).
SKLEARN_LOSSES = (
    "HalfSquaredError",
    "AbsoluteError",
    "PinballLoss",
    "HuberLoss",
    "HalfPoissonLoss",
    "HalfGammaLoss",
    "HalfTweedieLoss",
    "HalfTweedieLossIdentity",
    "HalfBinomialLoss",
    "ExponentialLoss",
    "HalfMultinomialLoss",
)

# The scikit-learn models accepted, by their full type name.
SKLEARN_MODELS = frozenset(
    {
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.RandomForestRegressor",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._forest.ExtraTreesRegressor",
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.ensemble._gb.GradientBoostingRegressor",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.tree._classes.ExtraTreeClassifier",
        "sklearn.tree._classes.ExtraTreeRegressor",
    }
)
# Every type a skops file of those models may name: the models, the parts they hold (trees,
# the boosting models' losses, initial estimators, binning, label encoding) and the numpy and
# builtin types of their attributes. Anything else in a file is refused before skops loads it.
SKOPS_TYPES = SKLEARN_MODELS | frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.dummy.DummyClassifier",
        "sklearn.dummy.DummyRegressor",
        "sklearn.preprocessing._label.LabelEncoder",
        *(f"sklearn._loss._loss.Cy{name}" for name in SKLEARN_LOSSES),
        *(f"sklearn._loss.loss.{name}" for name in SKLEARN_LOSSES),
        *(
            f"sklearn._loss.link.{name}"
            for name in ("Interval", "IdentityLink", "LogLink", "LogitLink", "HalfLogitLink", "MultinomialLogit")
        ),
        "numpy.ndarray",
        "numpy.dtype",
        *(
            f"numpy.{name}"
            for name in (
                "bool_",
                "int8",
                "int16",
                "int32",
                "int64",
                "uint8",
                "uint16",
                "uint32",
                "uint64",
                "float16",
                "float32",
                "float64",
                "str_",
                "object_",
            )
        ),
        "numpy.random._generator.Generator",
        "numpy.random.mtrand.RandomState",
        *(f"builtins.{name}" for name in ("dict", "list", "tuple", "str", "int", "float", "bool", "NoneType")),
    }
)
# A skops file's schema.json bigger than this is refused unread: a forest's schema takes
# a few hundred bytes per tree, so this allows about a hundred thousand trees.
MAX_SKOPS_SCHEMA_BYTES = 64 * 2**20
# Declared header counts of a LightGBM text model that size what it allocates.
LIGHTGBM_COUNTS = ("num_class", "num_tree_per_iteration", "max_feature_idx")


def precheck(path: Path, fmt: str, limits: Limits, field: str = FIELD) -> None:
    """What can be checked before a model library parses the file, without importing one:
    its size, that it looks like ``fmt``, the types a skops file names, a LightGBM header."""
    size = path.stat().st_size
    if size > limits.max_tree_model_bytes:
        raise JobInputError(
            field,
            f"{path.name} has {size} bytes, more than the limit of {limits.max_tree_model_bytes} "
            "(limits.maxTreeModelBytes)",
        )
    if fmt == "sklearn":
        with _as_input_error(path, fmt, field):  # a damaged zip or schema.json
            _check_skops_file(path, limits, field)
    elif fmt == "xgboost":
        with path.open("rb") as f:
            head = f.read(64).lstrip()
        if head[:1] != b"{":  # JSON and UBJSON models are objects; the legacy binary format is not
            raise JobInputError(
                field,
                f"{path.name} is not an XGBoost JSON or UBJSON model (the legacy binary format is not read); "
                "save it with booster.save_model('model.json') or check source.format (xgboost)",
            )
    else:
        _lightgbm_header(path, _text(path, field), limits, field)


def convert(path: Path, fmt: str, limits: Limits, field: str = FIELD) -> onnx.ModelProto:
    """Check (:func:`precheck`), read ``path`` as ``fmt`` and convert it; any failure is the
    file's: a :class:`JobInputError`."""
    readers = {"sklearn": _sklearn, "xgboost": _xgboost, "lightgbm": _lightgbm}
    precheck(path, fmt, limits, field)
    with _as_input_error(path, fmt, field):
        model = readers[fmt](path, limits, field)
    return model


@contextlib.contextmanager
def _as_input_error(path: Path, fmt: str, field: str) -> Iterator[None]:
    """Whatever a parser or converter raises on this file, as a :class:`JobInputError`."""
    try:
        yield
    except JobInputError:
        raise
    except Exception as e:
        raise JobInputError(
            field,
            f"{path.name} is not {DESCRIPTION[fmt]}, or cannot be converted to ONNX ({_clean(e)}); "
            f"check the file and source.format ({fmt})",
        ) from e


def _clean(e: BaseException) -> str:
    """The library's message without XGBoost's ``[time] file.cc:line:`` prefix."""
    return re.sub(r"^\[[0-9:]+\] \S+:\d+: ", "", first_line(e, 200))


def check_nodes(path: Path, fmt: str, trees: int, nodes: int, limits: Limits, field: str) -> None:
    """Refuse a model over ``limits.maxTreeNodes`` before it is converted."""
    if nodes > limits.max_tree_nodes:
        raise JobInputError(
            field,
            f"{path.name}: the {fmt} model has {nodes} nodes in {trees} trees, more than the limit of "
            f"{limits.max_tree_nodes} (limits.maxTreeNodes)",
        )


# --------------------------------------------------------------------------- sklearn


def _sklearn(path: Path, limits: Limits, field: str) -> onnx.ModelProto:
    import numpy as np
    import skops.io as sio
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier

    untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if t not in SKOPS_TYPES]
    if refused:
        raise JobInputError(field, _untrusted_message(path, refused[0]))
    model = sio.load(path, trusted=untrusted)
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    if name not in SKLEARN_MODELS:
        raise JobInputError(
            field, f"{path.name} holds a {type(model).__name__}, not a scikit-learn tree ensemble or decision tree"
        )
    if hasattr(model, "_predictors"):  # HistGradientBoosting: per iteration, one predictor per class
        sizes = [len(p.nodes) for iteration in model._predictors for p in iteration]
    elif hasattr(model, "tree_"):
        sizes = [model.tree_.node_count]
    else:  # forests (a list) and GradientBoosting (a 2-D array of trees)
        sizes = [tree.tree_.node_count for tree in np.ravel(model.estimators_)]
    check_nodes(path, "sklearn", len(sizes), sum(sizes), limits, field)
    converted = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, int(model.n_features_in_)]))],
        options={id(model): {"zipmap": False}} if is_classifier(model) else None,
        # TreeEnsembleClassifier/Regressor (ai.onnx.ml 3), what the tree methods edit.
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    link = getattr(getattr(model, "_loss", None), "link", None)
    if not is_classifier(model) and type(link).__name__ == "LogLink":
        _append_exp(converted)
    if ".ensemble._forest." in name:
        mark(converted, "forest")
    elif ".ensemble." in name:  # gradient boosting: one tree per class (or one) each round
        mark(converted, "boosted", len(sizes) // max(1, int(getattr(model, "n_iter_", 0) or len(model.estimators_))))
    return converted


def _append_exp(model: onnx.ModelProto) -> None:
    """Apply the exp of a log-link regressor (HistGradientBoostingRegressor with loss
    poisson or gamma) to the graph's output: skl2onnx 1.20 converts its trees and baseline
    but not the link, so its graph predicts the log of what scikit-learn predicts."""
    graph = model.graph
    out = graph.output[0].name
    raw = f"{out}_log"
    for node in graph.node:
        node.output[:] = [raw if o == out else o for o in node.output]
    graph.node.append(onnx.helper.make_node("Exp", [raw], [out], name="log_link"))


def _check_skops_file(path: Path, limits: Limits, field: str) -> None:
    """Bound what the zip unpacks to and check every type its schema names, before skops reads it."""
    if not zipfile.is_zipfile(path):
        raise JobInputError(
            field, f"{path.name} is not a skops file (a zip); check the file and source.format (sklearn)"
        )
    with zipfile.ZipFile(path) as z:
        members = z.infolist()
        unpacked = sum(m.file_size for m in members)
        if unpacked > limits.max_tree_model_bytes:
            raise JobInputError(
                field,
                f"{path.name} unpacks to {unpacked} bytes, more than the limit of {limits.max_tree_model_bytes} "
                "(limits.maxTreeModelBytes)",
            )
        schema = next((m for m in members if m.filename == "schema.json"), None)
        if schema is None or schema.file_size > MAX_SKOPS_SCHEMA_BYTES:
            raise JobInputError(field, f"{path.name} has no readable schema.json; save the model with skops.io.dump")
        types = _schema_types(json.loads(z.read(schema)))
    refused = next((t for t in types if t not in SKOPS_TYPES), None)
    if refused is not None:
        raise JobInputError(field, _untrusted_message(path, refused))


def _schema_types(schema: Any) -> list[str]:
    """Every ``module.class`` a skops schema names, in order (an explicit stack: nesting is the file's)."""
    found: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node:
                found.append(f"{node.get('__module__')}.{node['__class__']}")
            if node.get("__loader__") == "TypeNode" and isinstance(node.get("content"), dict):
                content = node["content"]  # a type stored as a value: the type it names counts too
                found.append(f"{content.get('__module__')}.{content.get('__class__')}")
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found


def _untrusted_message(path: Path, type_name: str) -> str:
    return (
        f"{path.name} names the type {type_name[:120]!r}, which a scikit-learn tree model does not need "
        "(only forests, gradient boosting and decision trees are loaded, with their numpy attributes)"
    )


# --------------------------------------------------------------------------- xgboost

# The objectives whose onnxmltools conversion computes what XGBoost predicts, each checked
# against Booster.predict (for binary:logitraw and multi:softmax, which predict margins and
# labels, the probabilities whose argmax is the label). Not these: reg:logistic (its sigmoid
# is left out), binary:hinge (converted as a regressor of margins), ranking and survival
# objectives (their scores read as a classifier's, or without their link).
XGBOOST_OBJECTIVES = frozenset(
    {
        "binary:logistic",
        "binary:logitraw",
        "multi:softprob",
        "multi:softmax",
        "reg:squarederror",
        "reg:squaredlogerror",
        "reg:pseudohubererror",
        "reg:absoluteerror",
        "reg:quantileerror",
        "count:poisson",
        "reg:gamma",
        "reg:tweedie",
    }
)


def _xgboost(path: Path, limits: Limits, field: str) -> onnx.ModelProto:
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = xgboost.Booster()
    booster.load_model(bytearray(path.read_bytes()))  # JSON or UBJSON, told apart by xgboost
    dumps = booster.get_dump()  # one text block per tree, one line per node
    check_nodes(path, "xgboost", len(dumps), sum(d.count("\n") for d in dumps), limits, field)
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective not in XGBOOST_OBJECTIVES:
        raise JobInputError(
            field,
            f"{path.name}: the XGBoost objective {objective[:60]!r} is not supported (its ONNX conversion does not "
            f"compute what XGBoost predicts); supported: {', '.join(sorted(XGBOOST_OBJECTIVES))}",
        )
    attributes = booster.attributes()
    best_iteration = attributes.get("best_iteration")
    if "scikit_learn" in attributes and best_iteration is not None:
        # Saved by XGBClassifier/XGBRegressor after early stopping: their predict uses the rounds
        # up to the best iteration, and the file holds every round trained (Booster.predict's).
        booster = booster[: int(best_iteration) + 1]
    booster.feature_names = None  # the converter reads splits as f<index>
    if objective == "multi:softmax":
        # Same trees as multi:softprob, which onnxmltools converts to probabilities; for
        # softmax it serves the raw margins as if they were (the label is their argmax).
        booster.set_param({"objective": "multi:softprob"})
    converted = convert_xgboost(booster, initial_types=[(INPUT_NAME, FloatTensorType([None, booster.num_features()]))])
    # num_parallel_tree > 1 grows that many trees per class each round (XGBRFClassifier/
    # XGBRFRegressor: one round, a random forest; several rounds: a boosted forest, pruned
    # by whole rounds). Their sum is the round's: the library divides their leaves by it.
    gbtree = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]
    tree_info = [int(c) for c in gbtree.get("model", gbtree.get("gbtree", {}).get("model", {}))["tree_info"]]
    _xgboost_class_ids(converted, tree_info)
    rounds = booster.num_boosted_rounds()
    per_round = len(tree_info) // max(1, rounds)  # classes x num_parallel_tree
    if rounds == 1 and per_round > max(tree_info, default=0) + 1:
        mark(converted, "forest")
    else:
        mark(converted, "boosted", per_round)
    return converted


def _xgboost_class_ids(model: onnx.ModelProto, tree_info: list[int]) -> None:
    """Score each tree for its own class, as XGBoost's ``tree_info`` lists it.

    onnxmltools 1.16 assigns tree ``t`` to class ``t % classes``: right when a round grows
    one tree per class, wrong with num_parallel_tree > 1 (a round holds each class's
    parallel trees one class after the other), where the converted model answered
    differently from XGBoost. Regressors and binary classifiers have one output: unchanged.
    """
    node = model.graph.node[find_node(model)]
    attrs = {a.name: a for a in node.attribute}
    if node.op_type != "TreeEnsembleClassifier" or "class_ids" not in attrs or max(tree_info, default=0) < 1:
        return
    trees = attrs["class_treeids"].ints
    if max(trees, default=0) >= len(tree_info):
        raise ValueError(f"the converted model has {max(trees) + 1} trees, XGBoost lists {len(tree_info)}")
    attrs["class_ids"].ints[:] = [tree_info[t] for t in trees]


# --------------------------------------------------------------------------- lightgbm


def _lightgbm(path: Path, limits: Limits, field: str) -> onnx.ModelProto:
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    text = _text(path, field)
    trees, nodes = _lightgbm_header(path, text, limits, field)
    check_nodes(path, "lightgbm", trees, nodes, limits, field)
    booster = lightgbm.Booster(model_str=text)
    if booster.num_trees() != trees:
        raise JobInputError(
            field,
            f"{path.name}: LightGBM read {booster.num_trees()} trees, the file lists {trees}; the file is damaged",
        )
    converted = convert_lightgbm(
        booster, initial_types=[(INPUT_NAME, FloatTensorType([None, booster.num_feature()]))], zipmap=False
    )
    per_round = booster.num_model_per_iteration()
    if _lightgbm_averages(text):
        # boosting_type rf: LightGBM averages the iterations' raw scores. onnxmltools 1.16
        # misses it for a Booster read from text (it looks for an attribute that only a
        # freshly trained one has) and sums them; averaging is written here as the leaves
        # divided by the number of iterations, the form of a scikit-learn forest.
        _scale_leaves(converted, 1.0 / max(1, trees // per_round))
        mark(converted, "forest")
    else:
        mark(converted, "boosted", per_round)
    return converted


def _lightgbm_averages(text: str) -> bool:
    """Whether the header (before the first tree) has LightGBM's bare ``average_output``
    line: what makes LightGBM itself average the trees (GBDT::LoadModelFromString)."""
    header = text[: text.find("\nTree=")] if "\nTree=" in text else text
    return "average_output" in header.splitlines()


def _scale_leaves(model: onnx.ModelProto, factor: float) -> None:
    """Multiply every leaf weight of the model's tree node by ``factor``."""
    from onnx import numpy_helper

    node = model.graph.node[find_node(model)]
    for a in node.attribute:
        if a.name in ("class_weights", "target_weights"):
            a.floats[:] = [w * factor for w in a.floats]
        elif a.name in ("class_weights_as_tensor", "target_weights_as_tensor"):
            values = numpy_helper.to_array(a.t)
            a.t.CopyFrom(numpy_helper.from_array((values * factor).astype(values.dtype), a.t.name))


def _text(path: Path, field: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")  # its size is checked first
    except UnicodeDecodeError:
        raise JobInputError(
            field,
            f"{path.name} is not a LightGBM text model (not UTF-8 text); check the file and source.format (lightgbm)",
        ) from None


def _lightgbm_header(path: Path, text: str, limits: Limits, field: str) -> tuple[int, int]:
    """(trees, nodes) of a LightGBM text model, from its text, before LightGBM parses it.

    LightGBM sizes its buffers from the header's counts; a count bigger than the node
    limit, or tree sizes that do not match the file, is refused here. Hand-written
    (LightGBM has no reader that only checks): a scan of ``key=value`` lines.
    """
    if not text.startswith("tree\n"):
        raise JobInputError(
            field,
            f"{path.name} is not a LightGBM text model (it must start with a 'tree' line); "
            "save it with booster.save_model('model.txt') or check source.format (lightgbm)",
        )
    header: dict[str, str] = {}
    leaves: list[int] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "Tree":
            leaves.append(0)
        elif key == "num_leaves" and leaves:
            leaves[-1] = _count(path, f"Tree={len(leaves) - 1} num_leaves", value, limits, field)
        elif key == "is_linear" and leaves and value.strip() not in ("", "0"):
            raise JobInputError(
                field,
                f"{path.name}: a LightGBM model trained with linear_tree is not supported: its ONNX conversion "
                "drops the linear models in the leaves, so it would answer differently; train it without linear_tree",
            )
        elif not leaves:
            header[key] = value
    for key in LIGHTGBM_COUNTS:
        _count(path, key, header.get(key, "0"), limits, field)
    if not header.get("objective", "-").strip():  # LightGBM 4.7 crashes (SIGSEGV) on an empty one
        raise JobInputError(field, f"{path.name}: the header's objective is empty; the file is damaged")
    if "tree_sizes" in header:  # LightGBM cuts the text into trees by these sizes, unchecked
        _check_tree_sizes(path, header["tree_sizes"].split(), text, len(leaves), field)
    return len(leaves), sum(max(2 * n - 1, 1) for n in leaves)


def _check_tree_sizes(path: Path, sizes: list[str], text: str, trees: int, field: str) -> None:
    """The header's tree_sizes must be the byte sizes of the file's trees, exactly.

    LightGBM cuts the text into trees at the offsets they add up to and parses them in
    parallel: sizes past the end of the text make it read out of bounds (a segmentation
    fault), sizes off by a byte make a parse error abort the process (std::terminate),
    both seen with LightGBM 4.7. The child process would turn either into an error; this
    check turns them into one that says what is wrong.
    """
    raw = text.encode()
    starts = [m.start() for m in re.finditer(rb"^Tree=", raw, re.MULTILINE)]
    end = raw.find(b"end of trees")
    actual = [b - a for a, b in zip(starts, [*starts[1:], end], strict=True)]
    if len(sizes) != trees or sizes != [str(n) for n in actual] or end < 0:
        listed = f"lists {len(sizes)} trees" if len(sizes) != trees else "does not match them"
        raise JobInputError(
            field,
            f"{path.name}: the header's tree_sizes {listed}, the file holds {trees} trees; the file is damaged "
            "(edited by hand?): save it again with booster.save_model",
        )


def _count(path: Path, key: str, value: str, limits: Limits, field: str) -> int:
    """A header count, refused when it is not a number or exceeds ``limits.maxTreeNodes``."""
    try:
        number = int(value.strip())
    except ValueError:
        raise JobInputError(field, f"{path.name}: {key}={value[:40]!r} is not a number; the file is damaged") from None
    if not 0 <= number <= limits.max_tree_nodes:
        raise JobInputError(
            field,
            f"{path.name}: {key}={number} is outside 0..{limits.max_tree_nodes}, the limit (limits.maxTreeNodes)",
        )
    return number


# --------------------------------------------------------------------------- child entry point

EXIT_INPUT_ERROR = 3


def main(argv: list[str]) -> int:
    """``convert FORMAT MODEL OUT.onnx ERROR.json LIMITS_JSON``: exit 0 with OUT written, or
    :data:`EXIT_INPUT_ERROR` with the :class:`JobInputError` as JSON in ERROR.json (a file,
    not stdout: the libraries print there)."""
    fmt, model, out, error, limits_json = argv
    try:
        proto = convert(Path(model), fmt, Limits.model_validate_json(limits_json))
    except JobInputError as e:
        Path(error).write_text(json.dumps({"field": e.field, "message": e.message}))
        return EXIT_INPUT_ERROR
    onnx.save(proto, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
