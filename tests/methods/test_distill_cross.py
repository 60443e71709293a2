"""distill across architectures: a neural teacher into a tree ensemble, a forest into an MLP.

Teachers are scikit-learn models converted with skl2onnx (what a user would bring as an
ONNX source) or the shared torch digits MLP, trained here on bundled datasets. Accuracy is
measured on a held-out half the method never sees; agreement with the teacher is reported
next to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelpress.api import Distill, PruneEnsemble
from modelpress.jobs.dataset import Samples
from modelpress.jobs.entrypoint import load_spec
from modelpress.jobs.errors import StepInputError
from modelpress.jobs.methods import MethodData, ModelHandle, get_method
from modelpress.jobs.pipeline import run
from modelpress.jobs.serving import OnnxModel
from modelpress.jobs.trees.loaders import tree_outputs

from .conftest import accuracy, batch_of, predict

NAME = "float_input"  # skl2onnx's usual input name: the student must keep the teacher's


def split(loader) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_heldout, y_heldout): a seeded half/half split."""
    x, y = loader(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x = x.astype(np.float32)
    half = len(x) // 2
    return x[order[:half]], y[order[:half]], x[order[half:]], y[order[half:]]


def onnx_teacher(estimator, features: int) -> ModelHandle:
    """The fitted estimator as the ONNX handle a source would load as: one input, one output
    (probabilities for a classifier, the label output and ZipMap dropped)."""
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = {id(final): {"zipmap": False}} if hasattr(final, "predict_proba") else None
    proto = convert_sklearn(estimator, initial_types=[(NAME, FloatTensorType([None, features]))], options=options)
    if any(n.op_type == "TreeEnsembleClassifier" for n in proto.graph.node):
        proto = tree_outputs(proto)
    else:
        keep = [o for o in proto.graph.output if o.name != "label"]
        del proto.graph.output[:]
        proto.graph.output.extend(keep)
    return ModelHandle([NAME], [proto.graph.output[0].name], onnx_model=proto)


def method_data(x: np.ndarray, y: np.ndarray, task: str = "classification", name: str = NAME) -> MethodData:
    train = Samples([{name: row} for row in x], y)
    return MethodData(task=task, train=train, calibration=train, seed=0)


def distill(teacher: ModelHandle, data: MethodData, **config):
    return get_method("distill").apply(teacher, Distill.model_validate(config), data)


def run_graph(model: ModelHandle, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {model.input_names[0]: x})  # exactly one output
    return out


@pytest.fixture(scope="module")
def cancer():
    return split(load_breast_cancer)


@pytest.fixture(scope="module")
def mlp_teacher(cancer) -> ModelHandle:
    x, y, _, _ = cancer
    model = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=500, random_state=0)).fit(x, y)
    return onnx_teacher(model, x.shape[1])


# --------------------------------------------------------------------------- neural teacher -> trees


def test_mlp_teacher_into_a_gradient_boosted_student(cancer, mlp_teacher) -> None:
    x, y, x_out, y_out = cancer
    before = mlp_teacher.proto.SerializeToString()
    result = distill(
        mlp_teacher,
        method_data(x, y),
        student={"trees": {"kind": "gradientBoosting", "trees": 40, "maxDepth": 3}},
    )
    assert mlp_teacher.proto.SerializeToString() == before, "distill changed the teacher"
    student = result.model
    graph = student.proto.graph
    # A drop-in: the teacher's input and output names, a dynamic batch, float probabilities.
    assert student.input_names == [NAME] and student.output_names == mlp_teacher.output_names
    (inp,) = graph.input
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [0, x.shape[1]]
    (node,) = graph.node  # one tree classifier, as a converted scikit-learn or XGBoost source has
    assert node.op_type == "TreeEnsembleClassifier" and node.output[1] == student.output_names[0]
    probabilities = run_graph(student, x_out)
    assert probabilities.shape == (len(x_out), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    teacher_out = run_graph(mlp_teacher, x_out)
    teacher_acc = (teacher_out.argmax(1) == y_out).mean()
    student_acc = (probabilities.argmax(1) == y_out).mean()
    agreement = (probabilities.argmax(1) == teacher_out.argmax(1)).mean()
    print(f"held-out: teacher {teacher_acc:.4f}, GBDT student {student_acc:.4f}, agreement {agreement:.4f}")
    assert student_acc >= teacher_acc - 0.03
    assert agreement >= 0.95
    # One tree per class per round, in ONE ensemble node the tree methods can prune further.
    assert result.changes["trees"] == 2 * 40 and result.changes["student"] == "trees"
    assert result.changes["teacherAgreement"] >= 0.97  # on the method's training data


def test_the_tree_student_can_be_pruned_further(cancer, mlp_teacher) -> None:
    x, y, x_out, y_out = cancer
    data = method_data(x, y)
    student = distill(mlp_teacher, data, student={"trees": {"trees": 30, "maxDepth": 3}}).model
    pruned = get_method("pruneEnsemble").apply(student, PruneEnsemble(fraction=0.5), data)
    assert pruned.changes  # it found and pruned the student's one tree ensemble
    assert (run_graph(pruned.model, x_out).argmax(1) == y_out).mean() >= 0.9


def test_alpha_chooses_between_the_labels_and_the_teacher(cancer) -> None:
    """A teacher that learned the opposite labels: at alpha 1 the student imitates it, at
    alpha 0 it learns the labels and ignores it."""
    x, y, x_out, y_out = cancer
    contrarian = onnx_teacher(RandomForestClassifier(30, max_depth=4, random_state=0).fit(x, 1 - y), x.shape[1])
    data = method_data(x, y)
    student = {"trees": {"kind": "randomForest", "trees": 30, "maxDepth": 6}}
    imitator = run_graph(distill(contrarian, data, student=student, alpha=1.0).model, x_out).argmax(1)
    learner = run_graph(distill(contrarian, data, student=student, alpha=0.0).model, x_out).argmax(1)
    teacher = run_graph(contrarian, x_out).argmax(1)
    assert (imitator == teacher).mean() >= 0.95 and (imitator == y_out).mean() <= 0.1
    assert (learner == y_out).mean() >= 0.9 and (learner == teacher).mean() <= 0.1


def test_temperature_keeps_the_teachers_probabilities_at_alpha_one(cancer, mlp_teacher) -> None:
    """Trees fitted at T=3 learn log p / 3; the graph scales back, so the student's
    probabilities are the teacher's, not softened ones."""
    x, y, x_out, _ = cancer
    student = {"trees": {"trees": 60, "maxDepth": 3}}
    result = distill(mlp_teacher, method_data(x, y), student=student, alpha=1.0, temperature=3.0)
    confident = run_graph(mlp_teacher, x_out).max(axis=1) > 0.99
    assert confident.mean() > 0.5 and run_graph(result.model, x_out).max(axis=1)[confident].mean() > 0.9


def test_torch_teacher_into_a_forest_outputs_logits_like_the_teacher(torch_model, data, val) -> None:
    result = distill(torch_model, data, student={"trees": {"kind": "randomForest", "trees": 20, "maxDepth": 10}})
    logits = predict(result.model, batch_of(val))
    assert logits.shape == (len(val), 10)
    assert not np.allclose(logits.sum(axis=1), 1.0), "a logits teacher gets a logits student (no softmax)"
    assert accuracy(result.model, val) >= accuracy(torch_model, val) - 0.08
    assert result.model.input_names == torch_model.input_names


def test_regression_teacher_into_trees_and_an_mlp() -> None:
    x, y, x_out, _ = split(load_diabetes)
    teacher = onnx_teacher(GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=0).fit(x, y), 10)
    data = method_data(x, y.astype(np.float32), task="regression")
    expected = run_graph(teacher, x_out)
    for student in ({"trees": {"trees": 50, "maxDepth": 3}}, {"mlp": {"hidden": [32]}}):
        result = distill(teacher, data, student=student, alpha=1.0, epochs=150, learningRate=3e-3)
        out = run_graph(result.model, x_out)
        assert out.shape == expected.shape == (len(x_out), 1)
        r2 = 1 - ((out - expected) ** 2).sum() / ((expected - expected.mean()) ** 2).sum()
        assert r2 >= 0.7, f"{student}: R^2 to the teacher {r2:.3f}"


# --------------------------------------------------------------------------- tree teacher -> MLP


def test_forest_teacher_into_an_mlp_student(cancer) -> None:
    x, y, x_out, y_out = cancer
    forest = RandomForestClassifier(100, random_state=0).fit(x, y)
    teacher = onnx_teacher(forest, x.shape[1])
    result = distill(teacher, method_data(x, y), student={"mlp": {"hidden": [32, 16]}}, epochs=60, learningRate=3e-3)
    student = result.model
    assert student.stage == "onnx" and student.input_names == [NAME]
    assert student.output_names == teacher.output_names
    assert not {n.op_type for n in student.proto.graph.node} & {"TreeEnsembleClassifier", "TreeEnsembleRegressor"}
    probabilities = run_graph(student, x_out)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # the teacher outputs probabilities
    teacher_out = run_graph(teacher, x_out)
    student_acc = (probabilities.argmax(1) == y_out).mean()
    teacher_acc = (teacher_out.argmax(1) == y_out).mean()
    agreement = (probabilities.argmax(1) == teacher_out.argmax(1)).mean()
    print(f"held-out: forest {teacher_acc:.4f}, MLP student {student_acc:.4f}, agreement {agreement:.4f}")
    assert student_acc >= teacher_acc - 0.03 and agreement >= 0.93
    assert result.changes["parametersAfter"] >= 30 * 32 + 32 + 32 * 16 + 16 + 16 * 2 + 2
    dims = [d.dim_param for d in student.proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0], "the batch axis stays dynamic"
    assert run_graph(student, x_out[:1]).shape == (1, 2)


# --------------------------------------------------------------------------- refusals


def image_teacher() -> ModelHandle:
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], ["scores"])],
        "image",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 1, 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
    )
    return ModelHandle(["pixels"], ["scores"], onnx_model=helper.make_model(graph))


def text_teacher() -> ModelHandle:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["scores"], to=TensorProto.FLOAT)],
        "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
    )
    return ModelHandle(["input_ids"], ["scores"], onnx_model=helper.make_model(graph))


@pytest.mark.parametrize(
    ("teacher", "features", "shown"),
    [
        (image_teacher, np.zeros((1, 1, 2), np.float32), "rank-4 float tensor"),
        (text_teacher, np.zeros(2, np.int64), "rank-2 int64 tensor"),
    ],
)
@pytest.mark.parametrize("student", [{"trees": {}}, {"mlp": {}}])
def test_a_non_tabular_teacher_is_refused_in_one_line(teacher, features, shown: str, student: dict) -> None:
    handle = teacher()
    samples = Samples([{handle.input_names[0]: features}] * 4, np.array([0, 1, 0, 1]))
    data = MethodData("classification", samples, samples)
    with pytest.raises(StepInputError) as info:
        distill(handle, data, student=student)
    message = str(info.value)
    kind = next(iter(student))
    assert message.startswith(f"student.{kind} needs a tabular teacher") and shown in message
    assert "\n" not in message and "widthMultiplier" in message


def test_a_two_input_teacher_is_refused(cancer) -> None:
    handle = ModelHandle(["input_ids", "attention_mask"], ["logits"], onnx_model=image_teacher().proto)
    with pytest.raises(StepInputError, match=r"takes 2 inputs \['input_ids', 'attention_mask'\]"):
        distill(handle, method_data(*cancer[:2]), student={"trees": {}})


def test_a_teacher_with_very_many_outputs_bounds_the_boosted_student() -> None:
    """60 outputs x 2000 rounds would be 120000 trees: refused before any is fitted."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 60])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 60])],
    )
    teacher = ModelHandle(["x"], ["y"], onnx_model=helper.make_model(graph))
    data = method_data(np.random.default_rng(0).random((8, 60), dtype=np.float32), None, "embedding", name="x")
    with pytest.raises(StepInputError, match=r"120000 trees, more than 100000; lower student.trees.trees"):
        distill(teacher, data, student={"trees": {"trees": 2000}})


def test_missing_values_go_to_trees_not_to_an_mlp(cancer) -> None:
    x, y, x_out, y_out = cancer
    x = x.copy()
    x[::7, 3] = np.nan  # a tree teacher routes missing values; a network cannot take them
    teacher = onnx_teacher(RandomForestClassifier(20, random_state=0).fit(x, y), x.shape[1])
    with pytest.raises(StepInputError, match="student.mlp: the training features hold NaN"):
        distill(teacher, method_data(x, y), student={"mlp": {}})
    trees = distill(teacher, method_data(x, y), student={"trees": {"trees": 20, "maxDepth": 3}}).model
    assert (run_graph(trees, x_out).argmax(1) == y_out).mean() >= 0.9


@pytest.mark.parametrize("student", [{"trees": {}}, {"mlp": {}}])
def test_labels_beyond_the_teachers_classes_are_refused(cancer, mlp_teacher, student: dict) -> None:
    x, y, _, _ = cancer
    with pytest.raises(StepInputError, match=r"class indices 0..1 \(the teacher has 2 outputs\); found 0..2"):
        distill(mlp_teacher, method_data(x, np.where(y == 1, 2, 0)), student=student)


def test_a_shrunk_student_of_an_onnx_teacher_is_refused(mlp_teacher, cancer) -> None:
    with pytest.raises(StepInputError, match="distill before the steps that make it ONNX, or use a trees or mlp"):
        distill(mlp_teacher, method_data(*cancer[:2]), student={"widthMultiplier": 0.5})


# --------------------------------------------------------------------------- a whole job


def test_distill_an_onnx_mlp_into_trees_job_to_a_served_artifact(tmp_path: Path, cancer, mlp_teacher) -> None:
    x, y, x_out, y_out = cancer
    onnx.save(mlp_teacher.proto, tmp_path / "teacher.onnx")
    np.savez(tmp_path / "val.npz", x=x_out, y=y_out)
    np.savez(tmp_path / "calib.npz", x=x, y=y)
    out = tmp_path / "out"
    doc = {
        "apiVersion": "modelpress.io/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": "cancer"},
        "spec": {
            "source": {"storageUri": (tmp_path / "teacher.onnx").as_uri(), "format": "onnx", "task": "classification"},
            "compression": {"steps": [{"distill": {"student": {"trees": {"trees": 40, "maxDepth": 3}}}}]},
            "validation": {
                "dataset": {"storageUri": (tmp_path / "val.npz").as_uri(), "format": "npz"},
                "calibration": {"storageUri": (tmp_path / "calib.npz").as_uri(), "format": "npz"},
                "metric": "accuracy",
                "maxAccuracyDrop": {"absolute": 0.03},
                "batchSize": 16,
            },
            "output": {"storageUri": out.as_uri() + "/"},
        },
    }
    (tmp_path / "cm.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    summary = run(load_spec(tmp_path / "cm.yaml"), tmp_path / "work").summary
    assert summary.outcome == "Validated", summary.reason

    served = OnnxModel("cancer", out / summary.recipe_hash)
    assert served.load()
    body = served.predict({"instances": x_out[:8].tolist()})
    probabilities = np.asarray(body["predictions"])
    assert probabilities.shape == (8, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
