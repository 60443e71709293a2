"""Tree model sources: scikit-learn (skops), XGBoost (JSON, UBJSON) and LightGBM (text)
models become ONNX graphs that compute what the library computes, with the one-input,
one-output interface the pipeline expects; hostile files get a one-line error naming the
field; an xgboost source goes through a whole job to an artifact the ONNX runtime serves.

Every model and hostile file is built here, from scikit-learn's bundled datasets.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skops.io as sio
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingClassifier, RandomForestClassifier

from modelpress.api import Limits, PruneEnsemble
from modelpress.jobs.dataset import Samples
from modelpress.jobs.entrypoint import load_spec
from modelpress.jobs.errors import JobInputError
from modelpress.jobs.methods import MethodData, ModelHandle, StepResult, get_method
from modelpress.jobs.models import load_source
from modelpress.jobs.pipeline import run
from modelpress.jobs.serving import OnnxModel
from modelpress.jobs.trees.ensemble import read

from .conftest import make_spec, write_spec

URI = "s3://models/tree"


def data(name: str) -> tuple[np.ndarray, np.ndarray]:
    loader = {"digits": load_digits, "cancer": load_breast_cancer, "diabetes": load_diabetes}[name]
    x, y = loader(return_X_y=True)
    return x.astype(np.float32), y


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x})  # exactly one output
    return out


def check_interface(handle, features: int, output: str, width: int) -> None:
    graph = handle.proto.graph
    assert handle.input_names == ["input"] and handle.output_names == [output]
    (inp,) = graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [features]
    (out,) = graph.output
    assert out.name == output and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.shape.dim[-1].dim_value == width
    assert {n.op_type for n in graph.node} & {"TreeEnsembleClassifier", "TreeEnsembleRegressor"}


def refused(path: Path, fmt: str, task: str = "classification", **limits) -> JobInputError:
    with pytest.raises(JobInputError) as info:
        load_source(path, fmt, task, uri=f"{URI}/{path.name}", limits=Limits(**limits))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert str(path.parent) not in message, "errors show the user's URI, not the job's scratch path"
    return info.value


# --------------------------------------------------------------------------- faithful conversion


@pytest.mark.parametrize(
    ("model", "dataset"),
    [
        (RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0), "digits"),
        (HistGradientBoostingClassifier(max_iter=20, random_state=0), "cancer"),
        (GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0), "diabetes"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_sklearn_skops_models_convert_faithfully(tmp_path: Path, model, dataset: str) -> None:
    x, y = data(dataset)
    model.fit(x, y)
    path = tmp_path / "model.skops"
    sio.dump(model, path)
    task = "classification" if hasattr(model, "predict_proba") else "regression"
    handle = load_source(path, "sklearn", task, uri=URI)
    if task == "classification":
        expected = model.predict_proba(x)
        check_interface(handle, x.shape[1], "probabilities", expected.shape[1])
    else:
        expected = model.predict(x)[:, None]
        check_interface(handle, x.shape[1], "prediction", 1)
    np.testing.assert_allclose(run_onnx(handle.proto, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("suffix", ["json", "ubj"])
def test_xgboost_classifier_json_and_ubjson(tmp_path: Path, suffix: str) -> None:
    x, y = data("digits")
    model = xgboost.XGBClassifier(n_estimators=15, max_depth=4, random_state=0).fit(x, y)
    path = tmp_path / f"model.{suffix}"
    model.save_model(path)
    handle = load_source(path, "xgboost", "classification", uri=URI)
    check_interface(handle, 64, "probabilities", 10)
    np.testing.assert_allclose(run_onnx(handle.proto, x), model.predict_proba(x), rtol=1e-5, atol=1e-5)


def test_xgboost_regressor_ubjson(tmp_path: Path) -> None:
    x, y = data("diabetes")
    model = xgboost.XGBRegressor(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    path = tmp_path / "model.ubj"
    model.save_model(path)
    handle = load_source(path, "xgboost", "regression", uri=URI)
    check_interface(handle, 10, "prediction", 1)
    np.testing.assert_allclose(run_onnx(handle.proto, x), model.predict(x)[:, None], rtol=1e-5, atol=1e-5)


def test_lightgbm_text_classifier(tmp_path: Path) -> None:
    x, y = data("cancer")
    model = lightgbm.LGBMClassifier(n_estimators=25, num_leaves=15, verbose=-1).fit(x, y)
    path = tmp_path / "model.txt"
    model.booster_.save_model(path)
    handle = load_source(path, "lightgbm", "classification", uri=URI)
    check_interface(handle, 30, "probabilities", 2)
    np.testing.assert_allclose(run_onnx(handle.proto, x), model.predict_proba(x), rtol=1e-5, atol=1e-5)


def test_onnx_tree_source_keeps_only_its_probabilities(tmp_path: Path) -> None:
    """skl2onnx's default export (label + ZipMap'd probabilities) loads with format onnx as
    one probabilities tensor: the ZipMap is unwrapped and the label output dropped."""
    from skl2onnx import to_onnx

    x, y = data("digits")
    model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, y)
    exported = to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    assert [n.op_type for n in exported.graph.node][-1] == "ZipMap" and len(exported.graph.output) == 2
    path = tmp_path / "forest.onnx"
    onnx.save(exported, path)
    handle = load_source(path, "onnx", "classification")
    (output,) = handle.output_names
    assert output == handle.proto.graph.output[0].name and len(handle.proto.graph.output) == 1
    assert "ZipMap" not in {n.op_type for n in handle.proto.graph.node}
    assert handle.input_names == [exported.graph.input[0].name]
    sess = ort.InferenceSession(handle.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (probabilities,) = sess.run(None, {handle.input_names[0]: x})
    np.testing.assert_allclose(probabilities, model.predict_proba(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- hostile files


def forest_skops(path: Path) -> Path:
    x, y = data("cancer")
    sio.dump(RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, y), path)
    return path


def rewrite_schema(path: Path, change) -> None:
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    schema = json.loads(members["schema.json"])
    change(schema)
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, body in members.items():
            z.writestr(name, body)


class Custom:
    """A class of the user's own: skops would have to import and build it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_skops_naming_os_system_is_refused_before_loading(tmp_path: Path) -> None:
    path = forest_skops(tmp_path / "model.skops")
    rewrite_schema(path, lambda s: s.update({"__module__": "os", "__class__": "system"}))
    error = refused(path, "sklearn")
    assert error.field == "source.storageUri" and "'os.system'" in error.message


def test_skops_holding_a_custom_class_is_refused(tmp_path: Path) -> None:
    x, y = data("cancer")
    model = RandomForestClassifier(n_estimators=2, max_depth=2, random_state=0).fit(x, y)
    model.extra = Custom()  # an attribute skops saves as an object of an untrusted type
    path = tmp_path / "model.skops"
    sio.dump(model, path)
    error = refused(path, "sklearn")
    assert error.field == "source.storageUri" and f"{Custom.__qualname__}'" in error.message


def test_pickle_named_skops_is_refused_unread(tmp_path: Path) -> None:
    x, y = data("cancer")
    path = tmp_path / "model.skops"
    path.write_bytes(pickle.dumps(RandomForestClassifier(n_estimators=2).fit(x, y)))
    error = refused(path, "sklearn")
    assert error.field == "source.storageUri" and "pickle" in error.message and "skops.io.dump" in error.message


def test_truncated_xgboost_json_is_one_line_naming_the_format(tmp_path: Path) -> None:
    x, y = data("cancer")
    path = tmp_path / "model.json"
    xgboost.XGBClassifier(n_estimators=3, max_depth=2).fit(x, y).save_model(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    error = refused(path, "xgboost")
    assert error.field == "source.storageUri"
    assert "model.json" in error.message
    assert "source.format (xgboost)" in error.message


def test_xgboost_crashing_its_own_parser_is_one_line(tmp_path: Path) -> None:
    """A child index out of its tree makes XGBoost itself crash (SIGSEGV, xgboost 3.2): the
    child process the file is read in dies, the job reports one line."""
    x, y = data("cancer")
    path = tmp_path / "model.json"
    xgboost.XGBClassifier(n_estimators=3, max_depth=2).fit(x, y).save_model(path)
    doc = json.loads(path.read_text())
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"][0] = 1_000_000
    path.write_text(json.dumps(doc))
    error = refused(path, "xgboost")
    assert error.field == "source.storageUri" and "source.format (xgboost)" in error.message


def lightgbm_text(path: Path) -> Path:
    x, y = data("cancer")
    lightgbm.LGBMClassifier(n_estimators=3, num_leaves=4, verbose=-1).fit(x, y).booster_.save_model(path)
    return path


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        ("num_tree_per_iteration=4000000000", "num_tree_per_iteration=4000000000"),
        ("tree_sizes=" + " ".join(["100"] * 50_000), "tree_sizes lists 50000 trees"),
        # LightGBM 4.7 reads past the text at these offsets (SIGSEGV) when not refused first
        ("tree_sizes=900000000 900000000 900000000", "tree_sizes does not match them"),
        ("objective=", "objective is empty"),
    ],
    ids=["trees-per-iteration", "tree-sizes", "lying-tree-sizes", "empty-objective"],
)
def test_lightgbm_header_with_a_huge_tree_count_is_refused(tmp_path: Path, header: str, shown: str) -> None:
    path = lightgbm_text(tmp_path / "model.txt")
    key = header.split("=")[0]
    lines = [header if line.startswith(f"{key}=") else line for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    error = refused(path, "lightgbm")
    assert error.field == "source.storageUri" and shown in error.message


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = lightgbm_text(tmp_path / "model.txt")
    error = refused(path, "lightgbm", maxTreeModelBytes=1024)
    assert error.field == "source.storageUri" and "limits.maxTreeModelBytes" in error.message


def test_more_nodes_than_the_limit_is_refused_before_conversion(tmp_path: Path) -> None:
    x, y = data("cancer")
    path = tmp_path / "model.ubj"
    xgboost.XGBClassifier(n_estimators=5, max_depth=3).fit(x, y).save_model(path)
    error = refused(path, "xgboost", maxTreeNodes=10)
    assert error.field == "source.storageUri" and "limits.maxTreeNodes" in error.message


def test_a_file_that_is_not_its_format_names_source_format(tmp_path: Path) -> None:
    path = lightgbm_text(tmp_path / "model.txt")
    error = refused(path, "xgboost")
    assert error.field == "source.storageUri" and "source.format (xgboost)" in error.message
    error = refused(forest_skops(tmp_path / "forest.skops"), "lightgbm")
    assert "source.format (lightgbm)" in error.message


def test_a_regressor_under_task_classification_names_source_task(tmp_path: Path) -> None:
    x, y = data("diabetes")
    path = tmp_path / "model.json"
    xgboost.XGBRegressor(n_estimators=3, max_depth=2).fit(x, y).save_model(path)
    error = refused(path, "xgboost", task="classification")
    assert error.field == "source.task" and "regression" in error.message


# --------------------------------------------------------------------------- forests or boosting


def prune(handle, x: np.ndarray, y: np.ndarray, **config) -> StepResult:
    samples = Samples([{"input": row} for row in x], y)
    data = MethodData(task="classification", train=samples, calibration=samples)
    return get_method("pruneEnsemble").apply(handle, PruneEnsemble(**config), data)


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    return float((run_onnx(model, x).argmax(axis=1) == y).mean())


def agrees(model: onnx.ModelProto, x: np.ndarray, expected: np.ndarray) -> None:
    """Within float32 rounding on all but a few rows: LightGBM compares doubles with its
    thresholds, onnxruntime float32 inputs, so a value next to a threshold may split apart."""
    off = np.abs(run_onnx(model, x) - expected).max(axis=1) > 1e-5
    assert off.mean() <= 0.01, f"{off.sum()} of {len(x)} rows differ"


@pytest.mark.parametrize(
    ("fmt", "model"),
    [
        ("xgboost", xgboost.XGBRFClassifier(n_estimators=30, max_depth=4, random_state=0)),
        (
            "lightgbm",
            lightgbm.LGBMClassifier(
                boosting_type="rf", n_estimators=30, num_leaves=15, subsample=0.7, subsample_freq=1, verbose=-1
            ),
        ),
    ],
    ids=["XGBRFClassifier", "LightGBM-rf"],
)
def test_random_forests_of_xgboost_and_lightgbm_are_pruned_as_forests(tmp_path: Path, fmt: str, model) -> None:
    """Both have a base score or a link, so their tree node looks boosted: the source's
    library says forest, the converted model records it, and ``auto`` reads it (a prefix
    of a forest is a worse forest; LightGBM's rf once kept 1 of 30 trees as a "prefix")."""
    x, y = data("cancer")
    x_fit, y_fit, x_test, y_test = x[::2], y[::2], x[1::2], y[1::2]
    model.fit(x_fit, y_fit)
    path = tmp_path / ("model.json" if fmt == "xgboost" else "model.txt")
    (model.save_model if fmt == "xgboost" else model.booster_.save_model)(path)
    handle = load_source(path, fmt, "classification", uri=URI)
    # LightGBM rf averages its trees: the conversion does too (onnxmltools alone summed them).
    agrees(handle.proto, x, model.predict_proba(x))
    assert {p.key: p.value for p in handle.proto.metadata_props}["modelpress.ensemble"] == "forest"
    step = prune(handle, x_fit, y_fit, fraction=0.3)
    assert step.changes["ensemble"] == "forest" and step.changes["ensembleFrom"] == "model"
    assert step.changes["treesAfter"] == 9
    full = accuracy(handle.proto, x_test, y_test)
    assert accuracy(step.model.proto, x_test, y_test) >= full - 0.03


@pytest.mark.parametrize("fmt", ["xgboost", "lightgbm"])
def test_a_multiclass_forest_of_one_class_trees_keeps_as_many_trees_of_each_class(tmp_path: Path, fmt: str) -> None:
    """XGBoost (num_parallel_tree trees per class, one class after the other) and LightGBM's
    rf (one tree per class per iteration) grow one-class trees: they convert faithfully
    (onnxmltools gave XGBoost's the wrong classes) and are subset one tree per class at a time."""
    x, y = data("digits")
    if fmt == "xgboost":
        model = xgboost.XGBRFClassifier(n_estimators=6, max_depth=4, random_state=0).fit(x, y)
        path = tmp_path / "model.json"
        model.save_model(path)
    else:
        model = lightgbm.LGBMClassifier(
            boosting_type="rf", n_estimators=6, num_leaves=15, subsample=0.7, subsample_freq=1, verbose=-1
        ).fit(x, y)
        path = tmp_path / "model.txt"
        model.booster_.save_model(path)
    handle = load_source(path, fmt, "classification", uri=URI)
    agrees(handle.proto, x, model.predict_proba(x))
    step = prune(handle, x, y, trees=3)
    assert step.changes["ensemble"] == "forest" and step.changes["treesAfter"] == 30
    kept = read(step.model.proto)
    per_class = np.sum([t.has_weight.any(axis=0) for t in kept.trees], axis=0)
    assert per_class.tolist() == [3] * 10
    assert accuracy(step.model.proto, x, y) >= accuracy(handle.proto, x, y) - 0.05


def test_an_xgboost_boosted_forest_keeps_whole_rounds(tmp_path: Path) -> None:
    """num_parallel_tree 3 over 4 rounds is boosting whose rounds are forests: a prefix of
    whole rounds (a part of a round would be a third of a round's forest, unscaled)."""
    x, y = data("cancer")
    params = {"num_parallel_tree": 3, "max_depth": 3, "objective": "binary:logistic", "subsample": 0.8}
    booster = xgboost.train(params, xgboost.DMatrix(x, y), num_boost_round=4)
    path = tmp_path / "model.json"
    booster.save_model(path)
    handle = load_source(path, "xgboost", "classification", uri=URI)
    step = prune(handle, x, y, trees=2)
    assert step.changes["ensemble"] == "boosted" and step.changes["treesPerRound"] == 3
    assert step.changes["treesAfter"] in (3, 6)
    rounds = step.changes["treesAfter"] // 3
    expected = booster.predict(xgboost.DMatrix(x), iteration_range=(0, rounds))
    np.testing.assert_allclose(run_onnx(step.model.proto, x)[:, 1], expected, rtol=1e-5, atol=1e-5)


def test_ensemble_metadata_of_an_onnx_source_is_read_and_junk_ignored(tmp_path: Path) -> None:
    """An ONNX source's metadata is the user's: a known kind is taken, anything else inferred."""
    x, y = data("cancer")
    model = RandomForestClassifier(n_estimators=12, max_depth=4, random_state=0).fit(x, y)
    sio.dump(model, tmp_path / "model.skops")
    proto = load_source(tmp_path / "model.skops", "sklearn", "classification", uri=URI).proto
    for value, kind, source in [("boosted", "boosted", "model"), ("<junk>", "forest", "inferred")]:
        onnx.helper.set_model_props(proto, {"modelpress.ensemble": value, "modelpress.treesPerRound": "x" * 99})
        handle = ModelHandle(["input"], ["probabilities"], onnx_model=proto)
        step = prune(handle, x, y, trees=4)
        assert (step.changes["ensemble"], step.changes["ensembleFrom"]) == (kind, source)


# --------------------------------------------------------------------------- a whole job


def test_xgboost_source_job_to_a_served_artifact(tmp_path: Path) -> None:
    x, y = data("cancer")
    model = xgboost.XGBClassifier(n_estimators=40, max_depth=3, random_state=0).fit(x[::2], y[::2])
    model.save_model(tmp_path / "model.json")
    np.savez(tmp_path / "val.npz", x=x[1::2], y=y[1::2])
    out = tmp_path / "out"
    doc = make_spec(
        (tmp_path / "model.json").as_uri(),
        (tmp_path / "val.npz").as_uri(),
        out.as_uri() + "/",
        fmt="xgboost",
        steps=[{"pruneEnsemble": {"fraction": 0.9}}],
        maxAccuracyDrop={"absolute": 0.05},
    )
    summary = run(load_spec(write_spec(tmp_path / "cm.yaml", doc)), tmp_path / "work").summary
    assert summary.outcome == "Validated", summary.reason

    served = OnnxModel("cancer", out / summary.recipe_hash)
    assert served.load()
    body = served.predict({"instances": x[1::2][:8].tolist()})
    probabilities = np.asarray(body["predictions"])
    assert probabilities.shape == (8, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == model.predict(x[1::2][:8])).mean() >= 0.75
