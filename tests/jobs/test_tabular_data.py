"""Parquet and CSV datasets: round trips of scikit-learn's bundled tables, hostile files
refused before they cost anything, and a whole job scored on a parquet validation set."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelpress.api import Dataset, Limits
from modelpress.jobs.data import load_dataset
from modelpress.jobs.entrypoint import run_job
from modelpress.jobs.errors import JobInputError

from .conftest import make_spec, write_spec

FIELD = "validation.dataset"


def cancer() -> tuple[pa.Table, list[str]]:
    """breast_cancer as a table: the label first, then the features in reverse order
    (so the file's order is neither sklearn's nor alphabetical)."""
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    columns = {"label": pa.array(data.target.astype(np.int64))}
    for i in reversed(range(len(names))):
        columns[names[i]] = pa.array(data.data[:, i])
    return pa.table(columns), names


def dataset(fmt: str, **columns) -> Dataset:
    return Dataset.model_validate({"storageUri": "file:///d", "format": fmt, **columns})


def load(path: Path, fmt: str, *, inputs: tuple[str, ...] = ("input",), task: str | None = None, **kw):
    limits = kw.pop("limits", None)
    return load_dataset(path, fmt, list(inputs), limits=limits, dataset=dataset(fmt, **kw), task=task)


def refused(path: Path, fmt: str, **kw) -> JobInputError:
    with pytest.raises(JobInputError) as info:
        load(path, fmt, **kw)
    assert "\n" not in str(info.value), "one line, no traceback"
    return info.value


def write(table: pa.Table, path: Path, **parquet_options) -> Path:
    if path.suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path, **parquet_options)
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_breast_cancer_features_in_the_files_order_or_the_specs(tmp_path: Path, suffix: str) -> None:
    table, names = cancer()
    path = write(table, tmp_path / f"cancer{suffix}")
    fmt = suffix[1:]
    truth = load_breast_cancer()

    default = load(path, fmt)  # every column but "label", in the file's (reversed) order
    x = np.stack([s["input"] for s in default.features])
    assert x.dtype == np.float32 and x.shape == (569, 30)
    np.testing.assert_array_equal(x, truth.data[:, ::-1].astype(np.float32))
    assert default.labels.dtype == np.int64
    np.testing.assert_array_equal(default.labels, truth.target)

    chosen = [names[3], names[0], names[17]]
    subset = load(path, fmt, featureColumns=chosen)
    np.testing.assert_array_equal(
        np.stack([s["input"] for s in subset.features]), truth.data[:, [3, 0, 17]].astype(np.float32)
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_diabetes_targets_are_float32_for_regression(tmp_path: Path, suffix: str) -> None:
    x, y = load_diabetes(return_X_y=True)
    columns = {f"f{i}": pa.array(x[:, i]) for i in range(x.shape[1])}
    path = write(pa.table({**columns, "progression": pa.array(y)}), tmp_path / f"diabetes{suffix}")

    samples = load(path, suffix[1:], task="regression", labelColumn="progression")
    assert samples.labels.dtype == np.float32
    np.testing.assert_allclose(samples.labels, y.astype(np.float32))
    assert samples.features[0]["input"].shape == (10,)
    # without a label column named "label" and none set, the data has no labels and every column is a feature
    unlabeled = load(path, suffix[1:], task="regression")
    assert unlabeled.labels is None and unlabeled.features[0]["input"].shape == (11,)


def test_classification_labels_written_as_floats_become_int64(tmp_path: Path) -> None:
    path = write(pa.table({"a": [0.5, 1.5], "label": [1.0, 0.0]}), tmp_path / "t.parquet")
    assert load(path, "parquet", task="classification").labels.dtype == np.int64
    half = write(pa.table({"a": [0.5, 1.5], "label": [1.0, 0.5]}), tmp_path / "half.parquet")
    error = refused(half, "parquet", task="classification")
    assert error.field == f"{FIELD}.storageUri" and "'label'" in error.message and "row 1" in error.message


def test_unused_string_columns_are_never_read(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b"], "x": [1, 2], "label": [0, 1]})
    for suffix in (".parquet", ".csv"):
        path = write(table, tmp_path / f"ids{suffix}")
        assert len(load(path, suffix[1:], featureColumns=["x"])) == 2


def test_the_index_pandas_stores_as_a_column_is_not_a_feature(tmp_path: Path) -> None:
    """A split frame (train_test_split, df.sample) keeps its row labels, and to_parquet writes
    them as a column: the features are what pandas.read_parquet reads back as columns."""
    import pandas as pd

    frame = pd.DataFrame({"a": [0.5, 1.5, 2.5], "b": [1.0, 2.0, 3.0], "label": [0, 1, 0]}).iloc[[2, 0]]
    frame.to_parquet(tmp_path / "split.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "split.parquet").names
    x = np.stack([s["input"] for s in load(tmp_path / "split.parquet", "parquet").features])
    np.testing.assert_array_equal(x, [[2.5, 3.0], [0.5, 1.0]])
    frame.set_index("a").to_parquet(tmp_path / "indexed.parquet")  # a named index: not a feature either
    assert load(tmp_path / "indexed.parquet", "parquet").features[0]["input"].shape == (1,)
    named = load(tmp_path / "indexed.parquet", "parquet", featureColumns=["a", "b"])  # unless named
    assert named.features[0]["input"].tolist() == [2.5, 3.0]


def test_the_unnamed_row_numbers_of_pandas_to_csv_are_refused_unless_features_are_listed(tmp_path: Path) -> None:
    """pandas' default to_csv() writes the index as a first column with an empty name; read
    as a feature it would shift every input by one."""
    import pandas as pd

    frame = pd.DataFrame({"a": [0.5, 1.5], "b": [1.0, 2.0], "label": [0, 1]})
    frame.to_csv(tmp_path / "indexed.csv")
    error = refused(tmp_path / "indexed.csv", "csv")
    assert error.field == f"{FIELD}.storageUri"
    assert "column 1 has no name" in error.message and "index=False" in error.message
    assert "featureColumns" in error.message
    # A blank name is no name either, wherever it is.
    write(pa.table({"a": [1.0], "  ": [2.0], "label": [0]}), tmp_path / "blank.parquet")
    assert "column 2 has no name" in refused(tmp_path / "blank.parquet", "parquet").message
    # With featureColumns the unnamed column is simply not read.
    x = load(tmp_path / "indexed.csv", "csv", featureColumns=["b", "a"]).features
    assert [s["input"].tolist() for s in x] == [[1.0, 0.5], [2.0, 1.5]]
    frame.to_csv(tmp_path / "plain.csv", index=False)
    assert len(load(tmp_path / "plain.csv", "csv")) == 2


# --------------------------------------------------------------------------- what the spec names


def test_columns_the_file_lacks_are_named(tmp_path: Path) -> None:
    path = write(pa.table({"x": [1.0], "label": [0]}), tmp_path / "t.parquet")
    error = refused(path, "parquet", featureColumns=["x", "y"])
    assert error.field == f"{FIELD}.featureColumns" and "'y'" in error.message and "'x'" in error.message
    assert refused(path, "parquet", labelColumn="target").field == f"{FIELD}.labelColumn"
    assert refused(path, "parquet", featureColumns=["x", "x"]).field == f"{FIELD}.featureColumns"
    error = refused(path, "parquet", featureColumns=["x", "label"])
    assert error.field == f"{FIELD}.featureColumns" and "label" in error.message


def test_column_fields_only_with_tabular_formats() -> None:
    with pytest.raises(ValidationError, match="featureColumns applies to parquet and csv data only"):
        dataset("npz", featureColumns=["x"])
    with pytest.raises(ValidationError, match="labelColumn applies to parquet and csv data only"):
        dataset("jsonl", labelColumn="y")


def test_a_model_with_two_inputs_is_refused(tmp_path: Path) -> None:
    path = write(pa.table({"x": [1.0], "label": [0]}), tmp_path / "t.csv")
    error = refused(path, "csv", inputs=("input_ids", "attention_mask"))
    assert error.field == f"{FIELD}.format" and "npz" in error.message


# --------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_string_feature_column_is_refused_by_name(tmp_path: Path, suffix: str) -> None:
    path = write(pa.table({"age": [30, 40], "city": ["Oslo", "Lima"], "label": [0, 1]}), tmp_path / f"s{suffix}")
    error = refused(path, suffix[1:])
    assert error.field == f"{FIELD}.storageUri"
    assert "'city'" in error.message and "encode" in error.message and "numeric" in error.message


def test_categorical_parquet_column_is_refused(tmp_path: Path) -> None:
    city = pa.array(["Oslo", "Lima", "Oslo"]).dictionary_encode()
    path = write(pa.table({"city": city, "label": [0, 1, 0]}), tmp_path / "c.parquet")
    assert "categorical" in refused(path, "parquet").message


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_nan_and_null_name_the_column_and_first_row(tmp_path: Path, suffix: str) -> None:
    nan = write(pa.table({"a": [1.0, 2.0, np.nan, np.nan], "label": [0, 1, 0, 1]}), tmp_path / f"nan{suffix}")
    error = refused(nan, suffix[1:])
    assert error.field == f"{FIELD}.storageUri" and "'a'" in error.message and "row 2 " in error.message
    null = write(pa.table({"a": [1.0, 2.0, 3.0], "label": [0, None, 1]}), tmp_path / f"null{suffix}")
    error = refused(null, suffix[1:])
    assert "'label'" in error.message and "row 1 " in error.message


def test_parquet_rows_over_the_limit_refused_from_the_metadata(tmp_path: Path, monkeypatch) -> None:
    path = write(pa.table({"a": np.zeros(50), "label": np.zeros(50, np.int64)}), tmp_path / "rows.parquet")
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read before the rows were checked"))
    error = refused(path, "parquet", limits=Limits(max_samples=10))
    assert error.field == f"{FIELD}.storageUri" and "50 rows" in error.message and "limits.maxSamples" in error.message


@pytest.mark.parametrize("dictionary", [False, True])
def test_parquet_decompression_bomb_refused_from_the_metadata(tmp_path: Path, monkeypatch, dictionary: bool) -> None:
    """100,000 zeros: 800 KB once decoded in a file of a few KB (zstd, or run-length dictionary indices)."""
    table = pa.table({"a": np.zeros(100_000), "label": np.zeros(100_000, np.int64)})
    path = write(table, tmp_path / "bomb.parquet", compression="zstd", use_dictionary=dictionary)
    assert path.stat().st_size < 20_000
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read before the size was checked"))
    error = refused(path, "parquet", limits=Limits(max_dataset_bytes=512 * 1024))
    assert error.field == f"{FIELD}.storageUri" and "limits.maxDatasetBytes" in error.message


def test_too_many_columns(tmp_path: Path) -> None:
    wide = pa.table({f"c{i}": [1.0] for i in range(12)})
    for suffix in (".parquet", ".csv"):
        error = refused(write(wide, tmp_path / f"wide{suffix}"), suffix[1:], limits=Limits(max_columns=10))
        assert "12 columns" in error.message and "limits.maxColumns" in error.message


def test_csv_bounds(tmp_path: Path) -> None:
    rows = write(pa.table({"a": np.arange(50.0)}), tmp_path / "rows.csv")
    assert "limits.maxSamples" in refused(rows, "csv", limits=Limits(max_samples=10)).message
    big = tmp_path / "big.csv"
    big.write_text("a\n" + "1\n" * 1000)
    assert "limits.maxDatasetBytes" in refused(big, "csv", limits=Limits(max_dataset_bytes=1024)).message


def test_compressed_csv_is_refused_not_inflated(tmp_path: Path) -> None:
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(gzip.compress(b"a,label\n" + b"0,0\n" * 500_000))
    assert path.stat().st_size < 1024 * 20
    error = refused(path, "csv")
    assert error.field == f"{FIELD}.storageUri" and "gzip-compressed" in error.message


def test_ragged_csv_row(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,label\n1,2,0\n3,1\n")
    error = refused(path, "csv")
    assert error.field == f"{FIELD}.storageUri" and "ragged.csv" in error.message and "columns" in error.message


def test_text_further_down_a_numeric_csv_column(tmp_path: Path) -> None:
    """pyarrow infers types from the first block; a later block's text is still refused in one line."""
    path = tmp_path / "late.csv"
    path.write_text("a,label\n" + "1.5,0\n" * 1_000_000 + "oops,1\n")  # 6 MB: past the first 4 MiB block
    error = refused(path, "csv", limits=Limits(max_samples=2_000_000))
    assert error.field == f"{FIELD}.storageUri" and "'oops'" in error.message


def test_files_that_are_not_parquet(tmp_path: Path) -> None:
    npz = tmp_path / "really.npz.parquet"
    np.savez(npz.with_suffix(".npz"), x=np.zeros(3))
    npz.write_bytes(npz.with_suffix(".npz").read_bytes())
    assert "is not a parquet file" in refused(npz, "parquet").message
    # the magic bytes at both ends, a footer length beyond the file
    lying = tmp_path / "lying.parquet"
    lying.write_bytes(b"PAR1" + b"\0" * 16 + (10**9).to_bytes(4, "little") + b"PAR1")
    assert "footer" in refused(lying, "parquet").message
    # a plausible footer of garbage: pyarrow's own error, in one line
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + b"\xff" * 64 + (32).to_bytes(4, "little") + b"PAR1")
    error = refused(garbage, "parquet")
    assert error.field == f"{FIELD}.storageUri" and "cannot read garbage.parquet" in error.message


# --------------------------------------------------------------------------- a whole job


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_job_scores_an_onnx_mlp_on_a_parquet_validation_set(tmp_path: Path) -> None:
    """Features stored in another order than the model's: featureColumns restores it, so the
    job's baseline is exactly the model's own accuracy (a mixed-up order would collapse it)."""
    table, names = cancer()
    truth = load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(table))
    val, calib = order[:200], order[200:]
    clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0))
    clf.fit(truth.data[calib], truth.target[calib])
    model = to_onnx(
        clf, initial_types=[("input", FloatTensorType([None, 30]))], options={"zipmap": False}, target_opset=17
    )
    (tmp_path / "mlp.onnx").write_bytes(model.SerializeToString())
    write(table.take(val), tmp_path / "val.parquet")
    write(table.take(calib), tmp_path / "calib.csv")
    doc = make_spec(
        (tmp_path / "mlp.onnx").as_uri(),
        (tmp_path / "val.parquet").as_uri(),
        (tmp_path / "out").as_uri(),
        calibration_uri=(tmp_path / "calib.csv").as_uri(),
        steps=[{"quantize": {"mode": "static"}}],
        maxAccuracyDrop={"absolute": 0.05},
    )
    doc["spec"]["validation"]["dataset"].update(format="parquet", featureColumns=names)
    doc["spec"]["validation"]["calibration"].update(format="csv", featureColumns=names)

    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")

    assert summary.outcome == "Validated", summary.reason
    x_val = truth.data[val].astype(np.float32)
    expected = float(np.mean(clf.predict(x_val) == truth.target[val]))
    assert expected > 0.9
    assert summary.results.baseline.score == pytest.approx(expected, abs=1 / len(val))
    report = json.loads((tmp_path / "out" / summary.recipe_hash / "report.json").read_text())
    assert report["trials"][0]["passed"] is True
