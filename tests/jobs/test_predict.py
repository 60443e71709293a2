"""`modelpress predict`: batch scoring through the same path as the modelpress-onnx runtime.

The digits MLP (sklearn, exported with skl2onnx: outputs ``label`` and ``probabilities``) is
scored in batch and by a real modelpress-onnx server (V1 and V2); the answers must be the
same bits. Inputs are generated here: parquet, csv and npz of the same rows.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401 - pa.csv
import pyarrow.parquet as pq
import pytest

from modelpress.cli import main

from ..serving.conftest import Server

ROWS = 120  # enough for several batches, few enough for quick single-row requests too
FEATURES = [f"px{i}" for i in range(64)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The digits MLP as an artifact dir (model/1/model.onnx), rows to score and their ids."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    root = tmp_path_factory.mktemp("predict")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(x[:1500], y[:1500])
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    model = root / "artifact" / "model" / "1" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(onx.SerializeToString())
    rows = x[1500 : 1500 + ROWS]
    ids = np.array([f"user-{i:04d}" for i in range(ROWS)])
    return {
        "artifact": root / "artifact",
        "x": rows,
        "ids": ids,
        "digest": hashlib.sha256(model.read_bytes()).hexdigest(),
    }


def table(x: np.ndarray, ids: np.ndarray) -> pa.Table:
    return pa.table({"uid": ids, **{name: x[:, j] for j, name in enumerate(FEATURES)}, "label": np.zeros(len(x))})


def predict(artifact: Path, data: Path, out: Path, *flags: str) -> int:
    return main(["predict", str(artifact), "--input", str(data), "--output", str(out), *flags])


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_batch_equals_online_v1_and_v2_bit_for_bit(digits, tmp_path):
    data, out = tmp_path / "rows.parquet", tmp_path / "out.parquet"
    pq.write_table(table(digits["x"], digits["ids"]), data, row_group_size=50)
    flags = ("--batch-size", "32", "--id-columns", "uid", "--task", "classification")
    assert predict(digits["artifact"], data, out, *flags) == 0
    batch = pq.read_table(out)
    assert batch.column_names == ["uid", "prediction", "probabilities", "model_digest", "prediction_id"]
    probabilities = np.array(batch.column("probabilities").to_pylist(), dtype=np.float32)
    predicted = batch.column("prediction").to_numpy()

    server = Server(digits["artifact"])
    try:
        v1 = post(f"{server.url}/v1/models/digits:predict", {"instances": digits["x"].tolist()})["predictions"]
        v2 = post(
            f"{server.url}/v2/models/digits/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [ROWS, 64], "datatype": "FP32", "data": digits["x"].ravel().tolist()}
                ]
            },
        )["outputs"]
        # One row per request, as online clients send them: the batch size must not change the bits.
        single = [
            post(f"{server.url}/v1/models/digits:predict", {"instances": digits["x"][i : i + 1].tolist()})[
                "predictions"
            ][0]
            for i in range(0, ROWS, 7)
        ]
    finally:
        server.stop()
    assert np.array_equal(bits(probabilities), bits([p["probabilities"] for p in v1]))
    assert predicted.tolist() == [p["label"] for p in v1]
    v2_out = {o["name"]: o for o in v2}
    assert np.array_equal(bits(probabilities).ravel(), bits(v2_out["probabilities"]["data"]))
    assert predicted.tolist() == v2_out["label"]["data"]
    assert np.array_equal(bits(probabilities[::7]), bits([p["probabilities"] for p in single]))
    # The ids come back in the input's order; every row names the model and gets its own prediction id.
    assert batch.column("uid").to_pylist() == digits["ids"].tolist()
    assert set(batch.column("model_digest").to_pylist()) == {digits["digest"]}
    prediction_ids = batch.column("prediction_id").to_pylist()
    assert len(set(prediction_ids)) == ROWS and all(uuid.UUID(hex=p).version == 4 for p in prediction_ids)


def test_csv_and_npz_inputs_score_like_parquet(digits, tmp_path, capsys):
    parquet, csv, npz = tmp_path / "rows.parquet", tmp_path / "rows.csv", tmp_path / "rows.npz"
    pq.write_table(table(digits["x"], digits["ids"]), parquet)
    pa.csv.write_csv(table(digits["x"], digits["ids"]), csv)
    np.savez(npz, x=digits["x"], uid=digits["ids"])
    answers = {}
    for data in (parquet, csv, npz):
        out = tmp_path / f"{data.suffix[1:]}.parquet"
        flags = ("--id-columns", "uid", "--task", "classification", "--batch-size", "50", "--summary", "json")
        assert predict(digits["artifact"], data, out, *flags) == 0, capsys.readouterr().err
        summary = json.loads(capsys.readouterr().out)
        assert summary["rows"] == ROWS and summary["modelDigest"] == digits["digest"]
        answers[data.suffix] = pq.read_table(out).drop_columns(["prediction_id"])
    assert answers[".csv"].equals(answers[".parquet"])
    assert answers[".npz"].equals(answers[".parquet"])


def test_without_ids_the_row_number_is_written(digits, tmp_path):
    data, out = tmp_path / "rows.parquet", tmp_path / "out.parquet"
    pq.write_table(table(digits["x"], digits["ids"]).drop_columns(["uid"]), data)
    assert predict(digits["artifact"], data, out, "--task", "classification", "--batch-size", "16") == 0
    assert pq.read_table(out, columns=["row"]).column("row").to_pylist() == list(range(ROWS))


def _nan_in_row_7(t: pa.Table) -> pa.Table:
    column = t.column("px3").to_numpy().copy()
    column[7] = np.nan
    return t.set_column(t.column_names.index("px3"), "px3", pa.array(column))


BAD = {
    "missing feature column": (lambda t: t, ("--feature-columns", "px0,nope"), "'nope'"),
    "missing id column": (lambda t: t, ("--id-columns", "order"), "--id-columns"),
    "string feature": (lambda t: t.append_column("city", pa.array(["x"] * ROWS)), (), "'city' is text"),
    "NaN": (_nan_in_row_7, (), "row 7"),
    "too few features": (lambda t: t.drop_columns(FEATURES[60:]), (), "rejected the input"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(digits, tmp_path, capsys, case):
    change, flags, expected = BAD[case]
    data, out = tmp_path / "rows.parquet", tmp_path / "out.parquet"
    pq.write_table(change(table(digits["x"], digits["ids"]).drop_columns(["uid"])), data)
    assert predict(digits["artifact"], data, out, "--task", "classification", *flags) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("modelpress predict: "), err
    assert expected in err
    assert list(tmp_path.iterdir()) == [data]  # no output, no temporary file left


def test_task_is_asked_for_when_the_artifact_does_not_say(digits, tmp_path, capsys):
    data = tmp_path / "rows.parquet"
    pq.write_table(table(digits["x"], digits["ids"]), data)
    assert predict(digits["artifact"], data, tmp_path / "out.parquet", "--id-columns", "uid") == 1
    assert "--task" in capsys.readouterr().err
