"""Tree models a user may bring, each through a whole job: the matrix of sources
(scikit-learn in skops, XGBoost JSON/UBJSON, LightGBM text, an skl2onnx TreeEnsemble) x
tasks (binary, multi-class, regression), with Parquet validation and calibration tables,
compressed with ``pruneEnsemble`` + ``pruneTrees`` and judged by the gate.

Each case checks what a user relies on: the run is Validated, the artifact the
modelpress-onnx runtime serves answers exactly as onnxruntime on the artifact file does,
and report.json says how many trees and nodes there were before and after. The models
are trained here on pandas frames (so they carry feature names, as users' models do) from
scikit-learn's bundled datasets. The matrix runs the job's pipeline in this process
(``run_job``: download, compress, upload, as ``modelpress job`` does); ``modelpress run``,
the same steps with the compress step in a limited child process, runs the example spec.
Models whose ONNX conversion would answer differently than their library are refused in one
line (some XGBoost objectives, LightGBM linear trees); a budget the trees cannot meet is Rejected.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import skops.io as sio
import xgboost
import yaml
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import DecisionTreeClassifier

from modelpress.jobs.artifact import MODEL_RELPATH
from modelpress.jobs.entrypoint import run_job
from modelpress.jobs.serving import OnnxModel

from .conftest import PYTHON, REPO, job_env, write_spec

LABEL = "target"
STEPS = [{"pruneEnsemble": {"fraction": 0.5}}, {"pruneTrees": {"leafTolerance": 0.02}}]


@dataclass(frozen=True)
class Table:
    """One bundled dataset cut in three (train, validation, calibration), as frames."""

    task: str
    train: pd.DataFrame
    val: pd.DataFrame
    calib: pd.DataFrame

    @property
    def features(self) -> list[str]:
        return [c for c in self.train.columns if c != LABEL]

    @property
    def x(self) -> pd.DataFrame:
        return self.train[self.features]

    @property
    def y(self) -> pd.Series:
        return self.train[LABEL]


def _table(loader: Callable[..., Any], task: str) -> Table:
    """Shuffled (the bundled sets are sorted by class) and cut in thirds; features named
    as scikit-learn names them (spaces, slashes and all), the label last."""
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(columns={"target": LABEL})
    frame = frame.iloc[np.random.default_rng(0).permutation(len(frame))].reset_index(drop=True)
    if task == "classification":
        frame[LABEL] = frame[LABEL].astype(np.int64)
    thirds = np.array_split(np.arange(len(frame)), 3)
    return Table(task, *(frame.iloc[part].reset_index(drop=True) for part in thirds))


@pytest.fixture(scope="module")
def tables() -> dict[str, Table]:
    return {
        "binary": _table(load_breast_cancer, "classification"),
        "multiclass": _table(load_wine, "classification"),
        "regression": _table(load_diabetes, "regression"),
    }


# --------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class Case:
    """A model kind: how it is trained and saved, and the trees it must hold."""

    name: str
    data: str  # key of tables()
    fmt: str  # source.format
    save: Callable[[Table, Path], Saved]
    search: bool = False


@dataclass(frozen=True)
class Saved:
    """A trained model's file, its number of trees, and the library's own predictions."""

    path: Path
    trees: int
    predict: Callable[[pd.DataFrame], np.ndarray]


def skops(model: Any, trees: Callable[[Any], int]) -> Callable[[Table, Path], Saved]:
    def save(t: Table, directory: Path) -> Saved:
        model.fit(t.x, t.y)
        path = directory / "model.skops"
        sio.dump(model, path)
        return Saved(path, trees(model), model.predict)

    return save


def forest(model: Any) -> int:
    return len(model.estimators_)


def boosted(model: Any) -> int:
    return model.estimators_.size  # [rounds, classes or 1]


def xgb(objective: str, suffix: str, rounds: int = 40) -> Callable[[Table, Path], Saved]:
    def save(t: Table, directory: Path) -> Saved:
        cls = xgboost.XGBRegressor if objective.startswith("reg:") else xgboost.XGBClassifier
        model = cls(n_estimators=rounds, max_depth=3, objective=objective, random_state=0).fit(t.x, t.y)
        path = directory / f"model.{suffix}"
        model.save_model(path)
        return Saved(path, len(model.get_booster().get_dump()), model.predict)

    return save


def xgb_early_stopped(t: Table, directory: Path) -> Saved:
    """Stopped early on the calibration table: the file keeps every round trained, the
    model's predict (and so the served model) only those up to the best iteration."""
    model = xgboost.XGBClassifier(n_estimators=200, max_depth=3, learning_rate=0.5, early_stopping_rounds=3)
    model.fit(t.x, t.y, eval_set=[(t.calib[t.features], t.calib[LABEL])], verbose=False)
    model.save_model(directory / "model.json")
    assert model.best_iteration + 1 < len(model.get_booster().get_dump())
    return Saved(directory / "model.json", model.best_iteration + 1, model.predict)


def lgbm(objective: str, rounds: int = 40) -> Callable[[Table, Path], Saved]:
    def save(t: Table, directory: Path) -> Saved:
        cls = lightgbm.LGBMRegressor if objective == "regression" else lightgbm.LGBMClassifier
        model = cls(n_estimators=rounds, num_leaves=8, min_child_samples=5, objective=objective, verbose=-1)
        model.fit(t.x, t.y)
        path = directory / "model.txt"
        model.booster_.save_model(path)
        return Saved(path, model.booster_.num_trees(), model.predict)

    return save


def skl2onnx_forest(t: Table, directory: Path) -> Saved:
    """A TreeEnsembleClassifier as skl2onnx writes it by default: a label output, a ZipMap,
    and the input named float_input (not the pipeline's ``input``)."""
    model = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0).fit(t.x.to_numpy(np.float32), t.y)
    path = directory / "model.onnx"
    onnx.save(to_onnx(model, t.x.to_numpy(np.float32)[:1], target_opset={"": 17, "ai.onnx.ml": 3}), path)
    return Saved(path, len(model.estimators_), lambda frame: model.predict(frame.to_numpy(np.float32)))


CASES = [
    Case(
        "sklearn-random-forest",
        "binary",
        "sklearn",
        skops(RandomForestClassifier(n_estimators=60, max_depth=6, random_state=0), forest),
    ),
    Case(
        "sklearn-extra-trees-multiclass",
        "multiclass",
        "sklearn",
        skops(ExtraTreesClassifier(n_estimators=60, max_depth=6, random_state=0), forest),
    ),
    Case(
        "sklearn-gradient-boosting-binary",
        "binary",
        "sklearn",
        skops(GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=0), boosted),
    ),
    Case(
        "sklearn-gradient-boosting-multiclass",
        "multiclass",
        "sklearn",
        skops(GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0), boosted),
        search=True,
    ),
    Case(
        "sklearn-hist-gradient-boosting-multiclass",
        "multiclass",
        "sklearn",
        skops(
            HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=8, random_state=0),
            lambda m: m.n_iter_ * m.n_trees_per_iteration_,
        ),
    ),
    Case(
        "sklearn-random-forest-regressor",
        "regression",
        "sklearn",
        skops(RandomForestRegressor(n_estimators=60, max_depth=6, random_state=0), forest),
    ),
    Case(  # a log link: the served model predicts exp of the trees' sum, as scikit-learn does
        "sklearn-hist-gradient-boosting-poisson",
        "regression",
        "sklearn",
        skops(HistGradientBoostingRegressor(max_iter=40, loss="poisson", random_state=0), lambda m: m.n_iter_),
    ),
    Case(
        "sklearn-decision-tree",
        "multiclass",
        "sklearn",
        skops(DecisionTreeClassifier(max_depth=6, random_state=0), lambda m: 1),
    ),
    Case("xgboost-binary-json", "binary", "xgboost", xgb("binary:logistic", "json")),
    Case("xgboost-binary-early-stopped", "binary", "xgboost", xgb_early_stopped),
    Case("xgboost-multiclass-ubj", "multiclass", "xgboost", xgb("multi:softprob", "ubj"), search=True),
    Case("xgboost-regression-json", "regression", "xgboost", xgb("reg:squarederror", "json")),
    Case("xgboost-regression-ubj", "regression", "xgboost", xgb("reg:squarederror", "ubj")),
    # labels, not probabilities, from XGBoost: served as the softmax probabilities of the same trees
    Case("xgboost-multiclass-softmax", "multiclass", "xgboost", xgb("multi:softmax", "json")),
    Case("lightgbm-binary", "binary", "lightgbm", lgbm("binary")),
    Case("lightgbm-multiclass", "multiclass", "lightgbm", lgbm("multiclass")),
    Case("lightgbm-regression", "regression", "lightgbm", lgbm("regression")),
    Case("onnx-skl2onnx-forest", "binary", "onnx", skl2onnx_forest),
]


# --------------------------------------------------------------------------- the run


def write_inputs(t: Table, directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """validation.dataset and validation.calibration as Parquet: the validation table
    has an extra id column first, so it names its featureColumns; the calibration table
    leaves them unset (every column but the label)."""
    val = t.val.copy()
    val.insert(0, "row_id", np.arange(len(val), dtype=np.int64))
    val.to_parquet(directory / "val.parquet")
    t.calib.to_parquet(directory / "calib.parquet")
    dataset = {
        "storageUri": (directory / "val.parquet").as_uri(),
        "format": "parquet",
        "featureColumns": t.features,
        "labelColumn": LABEL,
    }
    calibration = {"storageUri": (directory / "calib.parquet").as_uri(), "format": "parquet", "labelColumn": LABEL}
    return dataset, calibration


def spec_doc(name: str, fmt: str, t: Table, model: Path, directory: Path, **compression: Any) -> dict[str, Any]:
    dataset, calibration = write_inputs(t, directory)
    classification = t.task == "classification"
    return {
        "apiVersion": "modelpress.io/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": name},
        "spec": {
            "source": {"storageUri": model.as_uri(), "format": fmt, "task": t.task},
            "compression": {"steps": STEPS, **compression},
            "validation": {
                "dataset": dataset,
                "calibration": calibration,
                "metric": "accuracy" if classification else "mse",
                # a few samples of ~60-190 (classification); a quarter more squared error (regression)
                "maxAccuracyDrop": {"absolute": 0.05} if classification else {"relative": 0.25},
            },
            "output": {"storageUri": (directory / "out").as_uri() + "/"},
        },
    }


def check_baseline(report: dict[str, Any], saved: Saved, t: Table) -> None:
    """The job's baseline score is the library's own on the validation table: the
    conversion and the Parquet columns lost nothing. Not to the last digit: ONNX's
    TreeEnsemble compares float32 features with float32 thresholds, so a sample within
    float32 rounding of a float64 threshold may take the other branch (seen with LightGBM
    on diabetes: 4 of 147 samples, the mean squared error 0.2% off)."""
    predicted = saved.predict(t.val[t.features])
    score = report["baseline"]["score"]
    if t.task == "classification":
        assert abs(score - float((predicted == t.val[LABEL].to_numpy()).mean())) <= 1 / len(t.val) + 1e-9
    else:
        np.testing.assert_allclose(score, float(((predicted - t.val[LABEL].to_numpy()) ** 2).mean()), rtol=0.01)


def check_artifact(artifact: Path, t: Table) -> None:
    """The served model (modelpress-onnx's OnnxModel, V1 protocol) answers what
    onnxruntime on the artifact file answers, for every validation row."""
    x = t.val[t.features].to_numpy(np.float32)
    session = ort.InferenceSession(str(artifact / MODEL_RELPATH), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (expected,) = session.run(None, {inp.name: x})
    served = OnnxModel("tree", artifact)
    assert served.load()
    body = served.predict({"instances": x.tolist()})
    got = np.asarray(body["predictions"], dtype=np.float32)
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6, atol=1e-6)
    if t.task == "classification":
        assert expected.shape == (len(x), t.train[LABEL].nunique())
        np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-4)


def check_report(report: dict[str, Any], trees: int) -> dict[str, Any]:
    """report.json's chosen trial names trees and nodes before and after each tree step."""
    chosen = next(t for t in report["trials"] if t["index"] == report["chosenTrial"])
    prune_ensemble, prune_trees = (next(iter(c.values())) for c in chosen["changes"])
    assert prune_ensemble["treesBefore"] == trees
    if trees > 1:
        assert 1 <= prune_ensemble["treesAfter"] < trees
        assert prune_ensemble["nodesAfter"] < prune_ensemble["nodesBefore"]
    assert prune_trees["treesBefore"] == prune_ensemble["treesAfter"]
    assert prune_trees["nodesBefore"] == prune_ensemble["nodesAfter"]
    assert prune_trees["nodesAfter"] <= prune_trees["nodesBefore"]
    return chosen


# The search cases start too far (a tenth of the trees, stumps): the first trial fails the
# gate and a milder rung of the ladders passes.
SEARCH_STEPS = [{"pruneEnsemble": {"fraction": 0.1}}, {"pruneTrees": {"maxDepth": 1}}]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tree_model_compresses_validates_and_serves(case: Case, tables: dict[str, Table], tmp_path: Path) -> None:
    t = tables[case.data]
    saved = case.save(t, tmp_path)
    doc = spec_doc(case.name, case.fmt, t, saved.path, tmp_path, search={"enabled": case.search})
    if case.search:
        doc["spec"]["compression"]["steps"] = SEARCH_STEPS
        doc["spec"]["validation"]["maxAccuracyDrop"] = {"absolute": 0.02}
    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    assert summary.outcome == "Validated", summary.reason
    assert summary.artifact is not None
    artifact = Path(summary.artifact.storage_uri.removeprefix("file://"))
    check_artifact(artifact, t)
    report = json.loads((artifact / "report.json").read_text())
    check_baseline(report, saved, t)
    chosen = check_report(report, saved.trees)
    if case.search:
        assert not report["trials"][0]["passed"] and chosen["index"] > 0


def test_a_budget_the_trees_cannot_meet_is_rejected_naming_it(tables: dict[str, Table], tmp_path: Path) -> None:
    """One boosting round of stumps cannot keep every validation answer: Rejected, the
    threshold named, the report (with its tree counts) uploaded, no model."""
    t = tables["binary"]
    saved = lgbm("binary")(t, tmp_path)
    doc = spec_doc("too-far", "lightgbm", t, saved.path, tmp_path)
    doc["spec"]["compression"]["steps"] = [{"pruneEnsemble": {"trees": 1}}, {"pruneTrees": {"maxDepth": 1}}]
    doc["spec"]["validation"]["maxAccuracyDrop"] = {"absolute": 0.0}
    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    assert summary.outcome == "Rejected"
    assert "maxAccuracyDrop" in summary.reason and "\n" not in summary.reason
    (uploaded,) = (tmp_path / "out").iterdir()
    assert not (uploaded / MODEL_RELPATH).exists()
    (trial,) = json.loads((uploaded / "report.json").read_text())["trials"]
    assert trial["changes"][0]["pruneEnsemble"]["treesBefore"] == saved.trees
    assert trial["changes"][0]["pruneEnsemble"]["treesAfter"] == 1


@pytest.mark.parametrize("objective", ["reg:logistic", "binary:hinge", "rank:pairwise"])
def test_xgboost_objectives_onnx_cannot_reproduce_are_refused_in_one_line(
    objective: str, tables: dict[str, Table], tmp_path: Path
) -> None:
    """onnxmltools converts these without their output transform (or as the wrong kind of
    model): served, they would answer something else than XGBoost. Refused, by name."""
    t = tables["binary"]
    model = xgboost.XGBModel(n_estimators=5, max_depth=2, objective=objective).fit(t.x, t.y)
    model.save_model(tmp_path / "model.json")
    doc = spec_doc("objective", "xgboost", t, tmp_path / "model.json", tmp_path)
    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    assert summary.outcome == "Failed"
    assert summary.reason.startswith(f"source.storageUri: model.json: the XGBoost objective {objective!r}")
    assert "binary:logistic" in summary.reason and "\n" not in summary.reason


def test_lightgbm_linear_trees_are_refused_in_one_line(tables: dict[str, Table], tmp_path: Path) -> None:
    """onnxmltools converts a linear_tree model's splits and drops its leaves' linear models."""
    t = tables["regression"]
    model = lightgbm.LGBMRegressor(n_estimators=5, num_leaves=4, linear_tree=True, verbose=-1).fit(t.x, t.y)
    model.booster_.save_model(tmp_path / "model.txt")
    doc = spec_doc("linear", "lightgbm", t, tmp_path / "model.txt", tmp_path)
    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    assert summary.outcome == "Failed"
    assert summary.reason.startswith("source.storageUri: model.txt: a LightGBM model trained with linear_tree")
    assert "\n" not in summary.reason


def test_modelpress_run_on_the_example_spec(tables: dict[str, Table], tmp_path: Path) -> None:
    """examples/tree-ensemble.yaml as a newcomer runs it: its own steps, search and budget
    with local files in place of its s3:// URIs (and no minSpeedup: a 100-tree model is
    too small for the 3x the example asks of a 500-tree one)."""
    t = tables["binary"]
    model = xgboost.XGBClassifier(n_estimators=100, max_depth=3, random_state=0).fit(t.x, t.y)
    model.save_model(tmp_path / "xgb.ubj")
    dataset, calibration = write_inputs(t, tmp_path)
    doc = yaml.safe_load((REPO / "examples" / "tree-ensemble.yaml").read_text())
    spec = doc["spec"]
    assert spec["source"]["format"] == "xgboost" and spec["validation"]["dataset"]["format"] == "parquet"
    spec["source"]["storageUri"] = (tmp_path / "xgb.ubj").as_uri()
    spec["validation"]["dataset"] |= {k: dataset[k] for k in ("storageUri", "featureColumns")}
    spec["validation"]["calibration"]["storageUri"] = calibration["storageUri"]
    for name in ("dataset", "calibration"):
        spec["validation"][name]["labelColumn"] = LABEL
    del spec["validation"]["minSpeedup"]
    spec["output"]["storageUri"] = (tmp_path / "out").as_uri() + "/"
    proc = subprocess.run(
        [PYTHON, "-m", "modelpress.cli", "run", str(write_spec(tmp_path / "cm.yaml", doc))],
        env=job_env(COLUMNS="160"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validated" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    (artifact,) = (tmp_path / "out").iterdir()
    check_artifact(artifact, t)
    report = json.loads((artifact / "report.json").read_text())
    check_report(report, 100)
