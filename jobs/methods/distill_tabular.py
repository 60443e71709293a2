"""Distillation across architectures: a tree ensemble or a small MLP learns a tabular teacher.

The teacher is any model the pipeline runs (an ONNX graph, a tree source converted to ONNX,
a .pt2 or HF torch module) whose one input is a 2-D float matrix [N, features]: a text or
image model has no feature columns a tree could split on, and is refused. Its outputs are
computed once, on the method's training data (never the held-out split), and both students
learn from that table:

* ``trees``: scikit-learn regressors fitted on the blended targets (below), converted with
  skl2onnx and assembled into ONE tree ensemble node (``TreeEnsembleClassifier`` for
  classification, ``TreeEnsembleRegressor`` otherwise), so the student looks like a converted
  tree source: the tree methods (pruneEnsemble, pruneTrees) can compress it further and
  onnxruntime runs it in one node.
  gradientBoosting fits one HistGradientBoostingRegressor per class (scikit-learn's
  multi-class boosting grows one tree per class per round too; HistGradientBoosting is its
  fast, binned implementation); randomForest fits one multi-output RandomForestRegressor.
* ``mlp``: a ReLU network (inputs standardized inside it) trained with the torch path's
  loop and loss (``_torch_graph.fit``, ``distill.distillation_loss``) against the recorded
  teacher outputs, then exported by the pipeline's exporter (``jobs/export.to_onnx``).

Classification targets: the teacher's distribution at temperature T, ``softmax(log p / T)``
(``log p``: its log-probabilities, from logits or from probabilities alike), blended with the
one-hot labels as ``alpha * soft + (1 - alpha) * onehot``, exactly the mixture the torch loss
optimises. Trees regress that blend's log-probabilities per class (MSE in log space is what a
regressor can fit; a softmax recovers the distribution) and the graph computes
``softmax(T * trees(x))``, so at alpha 1 the student reproduces the teacher's own probabilities,
as a torch student's logits do after training at T. Regression: ``alpha * teacher + (1 - alpha)
* label``. The student's output means what the teacher's does: probabilities when the
teacher outputs probabilities (a tree classifier), logits otherwise, with the teacher's
input and output names and a dynamic batch axis, so it is a drop-in replacement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from modelpress.api import Distill, MlpStudent, TreeStudent
from modelpress.jobs.dataset import Samples, collate
from modelpress.jobs.errors import StepInputError
from modelpress.jobs.methods import MethodData, ModelHandle, StepResult
from modelpress.jobs.methods import _torch_graph as tg

log = logging.getLogger(__name__)

ML_DOMAIN = "ai.onnx.ml"
OPSETS = {"": 17, ML_DOMAIN: 3}
# Probabilities below this count as zero in the trees' log-space targets: a regressor that
# spent its splits on the teacher's 1e-9 vs 1e-7 would learn nothing that changes a decision.
MIN_PROBABILITY = 1e-4
TEACHER_BATCH = 4096  # rows per teacher call: bounds the memory of computing its outputs
# Trees a gradientBoosting student may grow (rounds x outputs): fitting time grows with it, and
# a teacher with very many outputs must not turn a small `trees` into an unbounded job.
MAX_STUDENT_TREES = 100_000
STUDENT_INPUT = "features"  # the MLP's input while it is trained and exported; renamed after


@dataclass
class Lesson:
    """What the teacher taught, computed once: the students never run the teacher."""

    x: np.ndarray  # [N, features] float32: the method's training inputs
    outputs: np.ndarray  # [N, outputs] float32: the teacher's outputs on them
    labels: np.ndarray | None
    probabilities: bool  # the teacher outputs probabilities (a classifier's rows summing to 1)
    input_name: str
    output_name: str
    flat_output: bool  # the teacher outputs [N] rather than [N, outputs]
    batch_dim: str  # the symbolic name of the teacher's batch axis


def teach(model: ModelHandle, data: MethodData, kind: str) -> Lesson:
    """The teacher's outputs on the method's training data (refusing a non-tabular teacher)."""
    x = _tabular_input(model, data.train, kind)
    outputs = _onnx_outputs(model, x) if model.stage == "onnx" else _torch_outputs(model, data.train, x)
    flat = outputs.ndim == 1
    outputs = outputs.reshape(len(x), -1).astype(np.float32)
    if not np.all(np.isfinite(outputs)):
        raise StepInputError(f"student.{kind}: the teacher outputs NaN or infinity on the training data")
    probabilities = bool(
        data.task == "classification"
        and outputs.min() >= 0
        and outputs.max() <= 1
        and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)
    )
    if data.task == "classification" and outputs.shape[1] < 2:
        raise StepInputError(
            f"student.{kind}: the teacher outputs {outputs.shape[1]} value per sample; a classification "
            "student needs one score per class"
        )
    labels = None if data.train.labels is None else np.asarray(data.train.labels)
    if data.task == "classification" and labels is not None:
        classes = outputs.shape[1]
        if not np.issubdtype(labels.dtype, np.number):
            raise StepInputError(f"the training labels must be class indices; got dtype {labels.dtype}")
        if labels.ndim != 1 or np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= classes:
            raise StepInputError(
                f"the training labels must be class indices 0..{classes - 1} (the teacher has {classes} "
                f"outputs); found {labels.min()}..{labels.max()}, shape {labels.shape}"
            )
    return Lesson(
        x, outputs, labels, probabilities, model.input_names[0], model.output_names[0], flat, _batch_dim(model)
    )


def _tabular_input(model: ModelHandle, train: Samples, kind: str) -> np.ndarray:
    """The training inputs as one [N, features] float32 matrix, or the one-line refusal."""
    refuse = (
        f"student.{kind} needs a tabular teacher (one 2-D float input [N, features]; "
        "text and images have no feature columns)"
    )
    fix = "use student.widthMultiplier or student.storageUri for it (torch sources)"
    if len(model.input_names) != 1:
        raise StepInputError(f"{refuse}; this one takes {len(model.input_names)} inputs {model.input_names}: {fix}")
    if len(train) == 0:
        raise StepInputError("distill needs training samples (the validation dataset's transfer split)")
    name = model.input_names[0]
    if model.stage == "onnx":
        (graph_input,) = [i for i in model.proto.graph.input if i.name == name]
        tensor = graph_input.type.tensor_type
        if tensor.elem_type != TensorProto.FLOAT or len(tensor.shape.dim) != 2:
            raise StepInputError(
                f"{refuse}; its input {name!r} is a rank-{len(tensor.shape.dim)} "
                f"{TensorProto.DataType.Name(tensor.elem_type).lower()} tensor: {fix}"
            )
    first = np.asarray(train.features[0][name])
    if first.ndim != 1 or not np.issubdtype(first.dtype, np.floating):
        raise StepInputError(f"{refuse}; its samples are {first.dtype} of shape {first.shape}: {fix}")
    return collate(train.features, train.pad_values)[name].astype(np.float32)


def _onnx_outputs(model: ModelHandle, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name, output = model.input_names[0], model.output_names[0]
    return np.concatenate(
        [session.run([output], {name: x[i : i + TEACHER_BATCH]})[0] for i in range(0, len(x), TEACHER_BATCH)]
    )


def _torch_outputs(model: ModelHandle, train: Samples, x: np.ndarray) -> np.ndarray:
    # An aten-level copy: its dropout/batch-norm mode is fixed to eval at export, and the
    # handle's module is never run or changed here.
    teacher = tg.frozen(tg.graph_module(model, train))
    name = model.input_names[0]
    with torch.no_grad():
        return np.concatenate(
            [
                teacher(**{name: torch.from_numpy(x[i : i + TEACHER_BATCH])}).float().numpy()
                for i in range(0, len(x), TEACHER_BATCH)
            ]
        )


def _batch_dim(model: ModelHandle) -> str:
    """The teacher's name for its batch axis, kept so clients see the same interface."""
    name = model.input_names[0]
    if model.stage == "onnx":
        graph_input = next(i for i in model.proto.graph.input if i.name == name)
        if graph_input.type.tensor_type.shape.dim[0].dim_param:
            return graph_input.type.tensor_type.shape.dim[0].dim_param
    return model.dynamic_axes.get(name, {}).get(0, "N")


def log_probabilities(outputs: np.ndarray, probabilities: bool) -> np.ndarray:
    """The teacher's log-probabilities, from its probabilities or its logits."""
    if probabilities:
        return np.log(np.maximum(outputs, MIN_PROBABILITY * 1e-3))
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def targets(lesson: Lesson, task: str, temperature: float, alpha: float) -> np.ndarray:
    """What a tree student regresses: the blended distribution's log-probabilities
    (classification) or the blended values, [N, outputs] float64."""
    teacher = lesson.outputs.astype(np.float64)
    if task != "classification":
        if task == "regression" and lesson.labels is not None:
            if lesson.labels.size != teacher.size:
                raise StepInputError(
                    f"the labels have {lesson.labels.size // len(teacher)} values per sample, "
                    f"the teacher outputs {teacher.shape[1]}"
                )
            return alpha * teacher + (1 - alpha) * lesson.labels.reshape(teacher.shape)
        return teacher
    soft = np.exp(log_probabilities(teacher, lesson.probabilities) / temperature)
    soft /= soft.sum(axis=1, keepdims=True)
    if lesson.labels is not None:
        soft = alpha * soft + (1 - alpha) * np.eye(teacher.shape[1])[lesson.labels.astype(np.int64)]
    return np.log(np.maximum(soft, MIN_PROBABILITY))


# --------------------------------------------------------------------------- tree student


def tree_student(lesson: Lesson, config: Distill, student: TreeStudent, task: str, seed: int) -> onnx.ModelProto:
    """Fit the tree student and assemble its graph with the teacher's interface.

    A classification student is ONE TreeEnsembleClassifier (post_transform SOFTMAX for a
    teacher that outputs probabilities, NONE for logits), the node a converted scikit-learn
    or XGBoost classifier has, with its label output left out of the graph's outputs: so the
    tree methods and the serving path treat it like any tree classifier source.
    """
    y = targets(lesson, task, config.temperature, config.alpha)
    trees = _fit_trees(lesson.x, y, student, task, seed)
    width = y.shape[1]
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    if task == "classification":
        nodes.append(_as_classifier(trees, lesson, config.temperature))
    elif lesson.flat_output:
        nodes += [_with_io(trees, lesson.input_name, "tree_values")]
        nodes.append(helper.make_node("Squeeze", ["tree_values", "squeeze_axis"], [lesson.output_name]))
        initializers.append(helper.make_tensor("squeeze_axis", TensorProto.INT64, [1], [1]))
    else:
        nodes.append(_with_io(trees, lesson.input_name, lesson.output_name))
    out_shape: list[Any] = [lesson.batch_dim] if lesson.flat_output else [lesson.batch_dim, width]
    graph = helper.make_graph(
        nodes,
        "distilled_trees",
        [helper.make_tensor_value_info(lesson.input_name, TensorProto.FLOAT, [lesson.batch_dim, lesson.x.shape[1]])],
        [helper.make_tensor_value_info(lesson.output_name, TensorProto.FLOAT, out_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()])
    model.producer_name = "modelpress-distill"
    onnx.checker.check_model(model)
    return model


def _as_classifier(regressor: onnx.NodeProto, lesson: Lesson, temperature: float) -> onnx.NodeProto:
    """The per-class log-probability regressor as a TreeEnsembleClassifier computing
    ``softmax(T * scores)``: leaf weights and base values are multiplied by T (the trees
    learned log p / T, see the module doc), the Softmax is the node's post_transform."""
    attrs = {a.name: helper.get_attribute_value(a) for a in regressor.attribute}
    classes = int(attrs.pop("n_targets"))
    attrs.pop("aggregate_function", None)  # SUM (the default) is all a classifier does
    base_values = attrs.pop("base_values", None)
    for part in ("ids", "nodeids", "treeids"):
        attrs[f"class_{part}"] = attrs.pop(f"target_{part}")
    attrs["class_weights"] = [w * temperature for w in attrs.pop("target_weights")]
    if base_values is not None and classes == 2:
        # onnxruntime reads two base values as a binary model's (it outputs [-s, s]): add each
        # class's base value to the leaves of its first tree instead (every row reaches one).
        for k, base in enumerate(base_values):
            first = min(t for t, c in zip(attrs["class_treeids"], attrs["class_ids"], strict=True) if c == k)
            for i, (t, c) in enumerate(zip(attrs["class_treeids"], attrs["class_ids"], strict=True)):
                if t == first and c == k:
                    attrs["class_weights"][i] += base * temperature
    elif base_values is not None:
        attrs["base_values"] = [b * temperature for b in base_values]
    attrs["post_transform"] = "SOFTMAX" if lesson.probabilities else "NONE"
    return helper.make_node(
        "TreeEnsembleClassifier",
        [lesson.input_name],
        ["student_label", lesson.output_name],
        name="distilled_trees",
        domain=ML_DOMAIN,
        classlabels_int64s=list(range(classes)),
        **attrs,
    )


def _fit_trees(x: np.ndarray, y: np.ndarray, student: TreeStudent, task: str, seed: int) -> onnx.NodeProto:
    """One TreeEnsembleRegressor node predicting every column of ``y``."""
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

    if student.kind == "randomForest":
        forest = RandomForestRegressor(
            n_estimators=student.trees,
            max_depth=student.max_depth,
            # A classifier forest's feature subsampling (RandomForestClassifier's default): with the
            # regressor's default (every feature at every split) the trees are too alike to average
            # well: digits, MLP teacher, 100 trees of depth 12: 93.2% with all features, 96.7% with sqrt.
            max_features="sqrt" if task == "classification" else 1.0,
            random_state=seed,
            n_jobs=1,
        )
        forest.fit(x, y if y.shape[1] > 1 else y[:, 0])
        return _tree_node(forest, x.shape[1])
    if student.trees * y.shape[1] > MAX_STUDENT_TREES:
        raise StepInputError(
            f"student.trees: {student.trees} rounds x {y.shape[1]} teacher outputs = {student.trees * y.shape[1]} "
            f"trees, more than {MAX_STUDENT_TREES}; lower student.trees.trees or use kind randomForest "
            "(one forest for every output)"
        )
    per_column = []
    for k in range(y.shape[1]):
        booster = HistGradientBoostingRegressor(
            max_iter=student.trees,
            max_depth=student.max_depth,
            max_leaf_nodes=None,  # depth bounds the tree, as in XGBoost and LightGBM's depth-wise growth
            learning_rate=student.learning_rate,
            early_stopping=False,  # the rounds asked for: the method's data is all training data
            random_state=seed,
        )
        per_column.append(_tree_node(booster.fit(x, y[:, k]), x.shape[1]))
    return per_column[0] if len(per_column) == 1 else _merge(per_column)


def _tree_node(estimator: Any, features: int) -> onnx.NodeProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    converted = convert_sklearn(
        estimator, initial_types=[("input", FloatTensorType([None, features]))], target_opset=OPSETS
    )
    (node,) = [n for n in converted.graph.node if n.op_type == "TreeEnsembleRegressor"]
    return node


def _merge(nodes: list[onnx.NodeProto]) -> onnx.NodeProto:
    """Single-output TreeEnsembleRegressors as one node whose target k is the k-th node's output.

    Hand-written: neither skl2onnx nor onnx merges ensembles. Trees are numbered round-major
    (round r of class k is tree ``r * K + k``), the order scikit-learn's and XGBoost's
    multi-class boosting emit and the tree methods read as boosting rounds; each node's
    leaves write to its own target, its base value becomes the target's.
    """
    merged: dict[str, Any] = {}
    base_values: list[float] = []
    classes = len(nodes)
    for k, node in enumerate(nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        base_values.append(float(attrs.pop("base_values", [0.0])[0]))
        attrs["nodes_treeids"] = [t * classes + k for t in attrs["nodes_treeids"]]
        attrs["target_treeids"] = [t * classes + k for t in attrs["target_treeids"]]
        attrs["target_ids"] = [k] * len(attrs["target_ids"])
        for name, value in attrs.items():
            if isinstance(value, list):
                merged.setdefault(name, []).extend(value)
            else:
                merged[name] = value
    merged["n_targets"] = classes
    return helper.make_node(
        "TreeEnsembleRegressor", ["input"], ["variable"], domain=ML_DOMAIN, base_values=base_values, **merged
    )


def _with_io(node: onnx.NodeProto, input_name: str, output_name: str) -> onnx.NodeProto:
    renamed = onnx.NodeProto()
    renamed.CopyFrom(node)
    renamed.name = "distilled_trees"
    del renamed.input[:]
    renamed.input.append(input_name)
    del renamed.output[:]
    renamed.output.append(output_name)
    return renamed


def count_trees(model: onnx.ModelProto) -> tuple[int, int]:
    """(trees, nodes) of the student's tree ensemble."""
    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    tree_ids = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "nodes_treeids")
    return len(set(tree_ids)), len(tree_ids)


# --------------------------------------------------------------------------- MLP student


class Mlp(nn.Module):
    """Standardize -> (Linear -> ReLU)* -> Linear -> rescale: the MLP student.

    Tabular features span orders of magnitude (a tree does not care, gradient descent does),
    so the training data's mean and scale are baked in as buffers, as are the targets'
    for regression: the network itself sees unit-scale numbers on both ends.
    """

    x_mean: torch.Tensor
    x_scale: torch.Tensor
    y_mean: torch.Tensor
    y_scale: torch.Tensor

    def __init__(self, x: np.ndarray, hidden: list[int], outputs: int, target: np.ndarray | None) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.from_numpy(x.mean(axis=0)).float())
        self.register_buffer("x_scale", torch.from_numpy(np.maximum(x.std(axis=0), 1e-6)).float())
        y_mean = np.zeros(outputs) if target is None else target.mean(axis=0)
        y_scale = np.ones(outputs) if target is None else np.maximum(target.std(axis=0), 1e-6)
        self.register_buffer("y_mean", torch.from_numpy(y_mean).float())
        self.register_buffer("y_scale", torch.from_numpy(y_scale).float())
        layers: list[nn.Module] = []
        width = x.shape[1]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.x_mean) / self.x_scale) * self.y_scale + self.y_mean


class Probabilities(nn.Module):
    """The trained student's logits as probabilities, for a teacher that outputs probabilities."""

    def __init__(self, logits: nn.Module) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=-1)


class RecordedTeacher(nn.Module):
    """The teacher's outputs computed once, looked up by input row: what the torch loss calls
    the teacher on each (shuffled) batch. Rows are keyed by their bytes; equal rows have
    equal outputs, so duplicates in the data are harmless."""

    def __init__(self, x: np.ndarray, outputs: np.ndarray) -> None:
        super().__init__()
        self.rows = {row.tobytes(): i for i, row in enumerate(x)}
        self.outputs = torch.from_numpy(outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        keys = features.detach().cpu().numpy().astype(np.float32)
        return self.outputs[[self.rows[row.tobytes()] for row in keys]].to(features.device)


def mlp_student(lesson: Lesson, config: Distill, student: MlpStudent, data: MethodData) -> onnx.ModelProto:
    """Train the MLP student on the recorded teacher and export it with the teacher's interface."""
    from modelpress.jobs.export import to_onnx
    from modelpress.jobs.methods.distill import distillation_loss

    if not np.all(np.isfinite(lesson.x)):
        raise StepInputError(
            "student.mlp: the training features hold NaN or infinity, which a network cannot take "
            "(a trees student splits on missing values); fill them in the dataset"
        )
    classes = data.task == "classification"
    teacher_outputs = log_probabilities(lesson.outputs, lesson.probabilities) if classes else lesson.outputs
    blended = None if classes else targets(lesson, data.task, config.temperature, config.alpha)
    module = Mlp(lesson.x, student.hidden, lesson.outputs.shape[1], blended)
    train = Samples([{STUDENT_INPUT: row} for row in lesson.x], lesson.labels)
    teacher = RecordedTeacher(lesson.x, teacher_outputs.astype(np.float32))
    loss = distillation_loss(teacher, data.task, config.temperature, config.alpha, lesson.labels is not None)
    tg.fit(module, train, data.task, config.epochs, config.learning_rate, data.seed, loss_fn=loss, device=data.device)
    served: nn.Module = Probabilities(module) if classes and lesson.probabilities else module
    served.eval()
    if lesson.flat_output:
        served = _Flat(served)
    handle = ModelHandle(
        [STUDENT_INPUT], [lesson.output_name], module=served, dynamic_axes={STUDENT_INPUT: {0: lesson.batch_dim}}
    )
    exported = to_onnx(handle, {STUDENT_INPUT: lesson.x[: tg.EXPORT_SAMPLES]}).proto
    _rename_input(exported, STUDENT_INPUT, lesson.input_name)
    return exported


class _Flat(nn.Module):
    """[N, 1] -> [N], for a teacher whose output has no value axis."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.inner(features).reshape(-1)


def _rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    """Give the exported student the teacher's input name (any name the teacher had, which a
    Python keyword argument could not always carry)."""
    graph = model.graph
    for value in graph.input:
        if value.name == old:
            value.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    onnx.checker.check_model(model)


# --------------------------------------------------------------------------- the step


def distill_tabular(model: ModelHandle, config: Distill, data: MethodData) -> StepResult:
    """The ``trees`` / ``mlp`` student of :class:`~modelpress.jobs.methods.distill.DistillMethod`."""
    student = config.student
    kind = "trees" if student.trees is not None else "mlp"
    lesson = teach(model, data, kind)
    changes: dict[str, Any] = {
        "student": kind,
        "trainingSamples": len(lesson.x),
        "temperature": config.temperature,
        "alpha": config.alpha,
    }
    if student.trees is not None:
        proto = tree_student(lesson, config, student.trees, data.task, data.seed)
        trees, nodes = count_trees(proto)
        changes.update(kind=student.trees.kind, trees=trees, nodes=nodes)
    else:
        assert student.mlp is not None  # the API sets exactly one student
        proto = mlp_student(lesson, config, student.mlp, data)
        changes.update(hidden=list(student.mlp.hidden), epochs=config.epochs)
        changes["parametersAfter"] = sum(int(np.prod(i.dims)) for i in proto.graph.initializer)
    changes["teacherAgreement"] = agreement(proto, lesson, data.task)
    log.info("distilled into %s: %s", kind, changes)
    return StepResult(model.with_model(onnx_model=proto), changes)


def agreement(proto: onnx.ModelProto, lesson: Lesson, task: str) -> float:
    """How closely the student follows the teacher on the training data: top-1 agreement
    for classification, else 1 - the student's error relative to the teacher's variance (R^2)."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {lesson.input_name: lesson.x})[0].reshape(len(lesson.x), -1)
    if task == "classification":
        return round(float((out.argmax(axis=1) == lesson.outputs.argmax(axis=1)).mean()), 4)
    spread = float(((lesson.outputs - lesson.outputs.mean(axis=0)) ** 2).sum()) or 1.0
    return round(1.0 - float(((out - lesson.outputs) ** 2).sum()) / spread, 4)
