"""A model not made by torch: scikit-learn's MLPClassifier, converted with skl2onnx,
compressed (dynamic int8 quantization) through the whole job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from modelpress.jobs.artifact import MODEL_RELPATH
from modelpress.jobs.entrypoint import run_job

from .conftest import make_spec, write_spec


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 200 iterations suffice here
def test_sklearn_mlp_compresses_through_the_job(tmp_path: Path) -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=200, random_state=0).fit(x_tr, y_tr)
    # zipmap off: probabilities as a tensor (a list of dicts is no model output for serving)
    model = to_onnx(clf, x_tr[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    (tmp_path / "mlp.onnx").write_bytes(model.SerializeToString())
    np.savez(tmp_path / "val.npz", x=x_val, y=y_val)
    np.savez(tmp_path / "calib.npz", x=x_tr[:100])
    out = tmp_path / "out"
    doc = make_spec(
        (tmp_path / "mlp.onnx").as_uri(),
        (tmp_path / "val.npz").as_uri(),
        out.as_uri(),
        calibration_uri=(tmp_path / "calib.npz").as_uri(),
        maxAccuracyDrop={"absolute": 0.03},
    )

    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")

    assert summary.outcome == "Validated", summary.reason
    results = summary.results
    assert results.baseline.score == float(np.mean(clf.predict(x_val) == y_val))
    assert results.compressed.size_bytes < results.baseline.size_bytes * 0.5
    artifact_dir = out / summary.recipe_hash
    compressed = onnx.load(str(artifact_dir / MODEL_RELPATH))
    assert any(n.op_type == "MatMulInteger" for n in compressed.graph.node)
    # the artifact really serves: same output names as the source, sensible predictions
    sess = ort.InferenceSession(str(artifact_dir / MODEL_RELPATH), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    label, _ = sess.run(None, {"X": x_val})
    assert np.mean(label == y_val) >= results.baseline.score - 0.03
    report = json.loads((artifact_dir / "report.json").read_text())
    assert report["trials"][0]["passed"] is True
