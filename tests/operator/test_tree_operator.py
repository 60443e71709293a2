"""A tree model through the operator: an XGBoost source with Parquet validation and
calibration tables, one CompressedModel, the Job's download/compress/upload containers run
for real by the kubelet stand-in (file:// storage), to Validated with results and an artifact.

The model and tables are built here from scikit-learn's bundled breast-cancer data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import xgboost
from cluster import Cluster, running_operator, sample_model
from helpers import condition
from sklearn.datasets import load_breast_cancer

from modelpress import api

TREES = 60


def write_inputs(directory: Path) -> pd.DataFrame:
    """model.ubj (XGBoost, trained on a frame: it names its features), val.parquet and
    calib.parquet (label column ``diagnosis``; written from shuffled slices, so pandas
    stores their row labels as a column too); returns the validation features."""
    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    frame = frame.iloc[np.random.default_rng(0).permutation(len(frame))].reset_index(drop=True)
    train, val, calib = (frame.iloc[part] for part in np.array_split(np.arange(len(frame)), 3))
    features = [c for c in frame.columns if c != "diagnosis"]
    model = xgboost.XGBClassifier(n_estimators=TREES, max_depth=3, random_state=0)
    model.fit(train[features], train["diagnosis"])
    model.save_model(directory / "model.ubj")
    val.to_parquet(directory / "val.parquet")
    calib.to_parquet(directory / "calib.parquet")
    return val[features]


def test_xgboost_from_parquet_to_validated_through_the_operator(cluster: Cluster, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    val = write_inputs(inputs)
    doc = sample_model(
        "fraud",
        source={"storageUri": (inputs / "model.ubj").as_uri(), "format": "xgboost", "task": "classification"},
        compression={"steps": [{"pruneEnsemble": {"fraction": 0.5}}, {"pruneTrees": {"leafTolerance": 0.02}}]},
        validation={
            "dataset": {
                "storageUri": (inputs / "val.parquet").as_uri(),
                "format": "parquet",
                "labelColumn": "diagnosis",
            },
            "calibration": {
                "storageUri": (inputs / "calib.parquet").as_uri(),
                "format": "parquet",
                "labelColumn": "diagnosis",
            },
            "metric": "accuracy",
            "maxAccuracyDrop": {"absolute": 0.05},
        },
        job={"gpu": 0, "backoffLimit": 0},
        output={"storageUri": (tmp_path / "artifacts").as_uri() + "/"},
    )
    with running_operator(cluster):
        created = cluster.apply_model(doc)
        obj = cluster.wait_phase("fraud", {"Validated", "Rejected", "Failed"}, 180)
        status = obj["status"]
        assert status["phase"] == "Validated", status["conditions"]
        assert status["recipeHash"] == api.recipe_hash(api.CompressedModel.model_validate(created).spec)
        results = status["results"]
        assert results["passed"] is True and results["metric"] == "accuracy"
        assert 0.85 < results["baseline"]["score"] <= 1.0
        assert results["accuracyDrop"] <= 0.05
        assert results["compressed"]["sizeBytes"] < results["baseline"]["sizeBytes"]
        for type_ in ("SpecValid", "Compressed", "Validated", "Ready"):
            assert condition(status, type_)["status"] == "True", type_
        # The Job ran the pod's three containers, download and compress as init containers.
        (job,) = cluster.objects("batch", "jobs")
        pod = job["spec"]["template"]["spec"]
        assert len(pod["initContainers"]) == 2 and len(pod["containers"]) == 1

    artifact = Path(status["artifact"]["storageUri"].removeprefix("file://"))
    model_file = artifact / "model" / "1" / "model.onnx"
    assert model_file.stat().st_size == status["artifact"]["sizeBytes"]
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"input": val.to_numpy(np.float32)})
    assert probabilities.shape == (len(val), 2)

    report = json.loads((artifact / "report.json").read_text())
    chosen = next(t for t in report["trials"] if t["index"] == report["chosenTrial"])
    ensemble, trees = (next(iter(change.values())) for change in chosen["changes"])
    assert ensemble["treesBefore"] == TREES and ensemble["treesAfter"] <= TREES // 2
    assert ensemble["nodesAfter"] < ensemble["nodesBefore"]
    assert trees["treesBefore"] == ensemble["treesAfter"] and trees["nodesAfter"] <= trees["nodesBefore"]
