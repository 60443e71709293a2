"""validation.slices by a dataset column: the spec rules, reading the column from parquet and
csv beside the features, the gate judging each value on its own, and a whole job rejected
for the one region a compression breaks while its average passes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from modelpress.api import (
    MAX_SLICE_VALUE_CHARS,
    MAX_SLICE_VALUES,
    CompressedModel,
    Dataset,
    Limits,
    ModelMetrics,
    Validation,
)
from modelpress.jobs import gate
from modelpress.jobs.data import load_dataset
from modelpress.jobs.dataset import Samples
from modelpress.jobs.entrypoint import run_job
from modelpress.jobs.errors import JobInputError
from modelpress.validate import check_object

from .conftest import make_spec, write_spec

REGION = {"by": "column", "column": "region", "maxAccuracyDrop": 0.1}
SLICE_FIELD = "validation.slices[0].column"


# --------------------------------------------------------------------------- spec rules


def validation(**kw) -> Validation:
    return Validation.model_validate(
        {
            "dataset": {"storageUri": "file:///v.parquet", "format": "parquet"},
            "metric": "accuracy",
            "maxAccuracyDrop": {"absolute": 0.125},
            **kw,
        }
    )


def test_a_column_slice_names_its_column_and_a_label_slice_none() -> None:
    assert validation(slices=[REGION]).slices[0].column == "region"
    with pytest.raises(ValidationError, match="a slice by column needs column"):
        validation(slices=[{"by": "column", "maxAccuracyDrop": 0.1}])
    with pytest.raises(ValidationError, match="column applies to slices by column only"):
        validation(slices=[{"by": "label", "column": "region", "maxAccuracyDrop": 0.1}])


def test_column_slices_need_a_table_dataset_reported_at_the_slice(tmp_path: Path) -> None:
    doc = make_spec(
        "s3://m/model.onnx", "s3://d/val.npz", "s3://o/", slices=[{"by": "label", "maxAccuracyDrop": 0.1}, REGION]
    )
    problems = check_object(doc)
    assert [(p.path, p.message) for p in problems] == [
        (
            "spec.validation.slices[1].column",
            "slices by column need a table: set validation.dataset.format to parquet or csv",
        )
    ]
    doc["spec"]["validation"]["dataset"]["format"] = "csv"
    assert check_object(doc) == []
    CompressedModel.model_validate(doc)


# --------------------------------------------------------------------------- the gate


def judged(base, cand, groups, labels=None, **kw) -> gate.GateResult:
    data = gate.Paired(np.array(base, float), np.array(cand, float), labels, groups)
    v = validation(**kw)
    score = lambda values: ModelMetrics(score=float(np.mean(values)))  # noqa: E731
    return gate.evaluate(v, score(base), score(cand), data)


def test_a_column_slice_fails_while_the_average_passes_naming_the_worst_value() -> None:
    region = np.array(["amer"] * 16 + ["emea"] * 4 + ["apac"] * 4, dtype=object)
    base = [1.0] * 24
    cand = [1.0] * 16 + [0.0] * 2 + [1.0] * 2 + [0.0] + [1.0] * 3  # emea loses 0.5, apac 0.25: 0.125 on average
    result = judged(base, cand, {"region": region}, slices=[REGION])
    assert result.slice_drops == {"region=amer": 0.0, "region=apac": 0.25, "region=emea": 0.5}
    assert result.failed == ["slices[0]: slice region=emea: drop 0.5 > 0.1 (worst of 2 failing slices)"]
    assert judged(base, cand, {"region": region}, slices=[{**REGION, "maxAccuracyDrop": 0.5}]).passed


def test_label_and_column_slices_are_judged_each_on_its_own_cut() -> None:
    labels = np.array([0, 1] * 10)
    store = np.arange(20) % 4  # numbers: shown as they are
    base, cand = [1.0] * 20, [0.0] + [1.0] * 19  # sample 0: label 0 (1 of 10), store 0 (1 of 5)
    slices = [{"by": "label", "maxAccuracyDrop": 0.15}, {"by": "column", "column": "store", "maxAccuracyDrop": 0.15}]
    result = judged(base, cand, {"store": store}, labels, slices=slices, maxAccuracyDrop={"absolute": 1})
    assert result.slice_drops == {
        "label=0": pytest.approx(0.1),
        "label=1": 0.0,
        "store=0": pytest.approx(0.2),
        "store=1": 0.0,
        "store=2": 0.0,
        "store=3": 0.0,
    }
    assert result.failed == ["slices[1]: slice store=0: drop 0.2 > 0.15"]


def test_column_slices_with_confidence_judge_each_values_bound() -> None:
    region = np.array(["a"] * 20 + ["b"] * 20, dtype=object)
    base, cand = [1.0] * 40, [1.0] * 20 + [0.0] + [1.0] * 19  # b loses one of 20: 0.05, under the budget
    point = judged(base, cand, {"region": region}, slices=[{**REGION, "maxAccuracyDrop": 0.0625}])
    assert point.passed and point.slice_drops["region=b"] == pytest.approx(0.05)
    result = judged(base, cand, {"region": region}, confidence=0.95, slices=[{**REGION, "maxAccuracyDrop": 0.0625}])
    bound = gate.drop_upper_bound("accuracy", gate.Paired(np.ones(20), np.array([0.0] + [1.0] * 19), None), 0.95)
    assert result.slice_drops == {"region=a": 0.0, "region=b": bound} and bound > 0.0625
    assert result.failed == [f"slices[0]: slice region=b: drop {bound:.4g} > 0.0625"]


def test_a_column_slice_without_the_columns_values_fails_as_unmeasured() -> None:
    result = judged([1.0], [1.0], {"other": np.array(["x"], dtype=object)}, slices=[REGION])
    assert result.failed == ["slices[0]: unmeasured (no per-sample results with column 'region')"]


# --------------------------------------------------------------------------- reading the column


def table(n: int = 6, **extra) -> pa.Table:
    return pa.table({"a": np.arange(n, dtype=np.float64), "label": np.arange(n) % 2, **extra})


def load(path: Path, fmt: str, slices: dict[str, str] | None = None, **columns) -> Samples:
    dataset = Dataset.model_validate({"storageUri": "file:///d", "format": fmt, **columns})
    slices = {"region": SLICE_FIELD} if slices is None else slices
    return load_dataset(path, fmt, ["input"], dataset=dataset, slice_columns=slices)


def write(t: pa.Table, path: Path) -> Path:
    if path.suffix == ".csv":
        pa_csv.write_csv(t, path)
    else:
        pq.write_table(t, path, row_group_size=2)  # several chunks: one dictionary across them
    return path


def refused(path: Path, fmt: str, **kw) -> JobInputError:
    with pytest.raises(JobInputError) as info:
        load(path, fmt, **kw)
    assert "\n" not in str(info.value), "one line, no traceback"
    return info.value


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_string_column_is_read_beside_the_features_not_as_one(tmp_path: Path, fmt: str) -> None:
    regions = ["emea", "amer", "emea", "apac", "amer", "emea"]
    samples = load(write(table(region=regions), tmp_path / f"d.{fmt}"), fmt)
    assert samples.input_names == ["input"] and samples.features[0]["input"].shape == (1,)  # a only
    assert list(samples.groups["region"]) == regions
    assert list(samples.labels) == [0, 1, 0, 1, 0, 1]


def test_numbers_name_slices_as_parquet_holds_them_and_csv_writes_them(tmp_path: Path) -> None:
    t = table(store=np.array([3, 1, 3, 2, 2, 1]), ok=[True, False] * 3, share=[0.5, 1.5] * 3)
    slices = {"store": SLICE_FIELD, "ok": "validation.slices[1].column", "share": "validation.slices[2].column"}
    parquet = load(write(t, tmp_path / "d.parquet"), "parquet", slices, featureColumns=["a"])
    assert list(parquet.groups["store"]) == [3, 1, 3, 2, 2, 1]
    assert list(parquet.groups["ok"]) == [True, False] * 3 and list(parquet.groups["share"]) == [0.5, 1.5] * 3
    csv = load(write(t, tmp_path / "d.csv"), "csv", slices, featureColumns=["a"])
    assert list(csv.groups["store"]) == ["3", "1", "3", "2", "2", "1"]  # the text as written
    assert list(csv.groups["ok"]) == ["true", "false"] * 3


def test_a_slice_column_listed_in_feature_columns_is_both(tmp_path: Path) -> None:
    t = table(store=np.array([3, 1, 3, 2, 2, 1]))
    samples = load(write(t, tmp_path / "d.parquet"), "parquet", {"store": SLICE_FIELD}, featureColumns=["a", "store"])
    assert [float(v) for v in samples.features[0]["input"]] == [0.0, 3.0]
    assert list(samples.groups["store"]) == [3, 1, 3, 2, 2, 1]


def test_groups_follow_the_samples_through_take_and_split(tmp_path: Path) -> None:
    samples = load(write(table(region=list("abcdef")), tmp_path / "d.parquet"), "parquet")
    assert list(samples.take(2).groups["region"]) == ["a", "b"]
    left, right = samples.split(0.5, seed=3)
    for part in (left, right):
        assert [part.groups["region"][i] for i in range(len(part))] == [
            "abcdef"[int(s["input"][0])] for s in part.features
        ]
    with pytest.raises(ValueError, match="2 values of 'region' for 1 samples"):
        Samples([{"input": np.zeros(1)}], groups={"region": np.array(["a", "b"])})


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_missing_value_is_refused_naming_its_row(tmp_path: Path, fmt: str) -> None:
    error = refused(write(table(region=["a", "b", None, "a", "b", "a"]), tmp_path / f"d.{fmt}"), fmt)
    assert error.field == "validation.dataset.storageUri"
    assert "column 'region' has a missing value (null, NA or NaN) in row 2 " in error.message


def test_nan_in_a_float_slice_column_is_refused(tmp_path: Path) -> None:
    error = refused(
        write(table(share=[0.5, 1.0, np.nan, 0.5, 1.0, 0.5]), tmp_path / "d.parquet"),
        "parquet",
        slices={"share": SLICE_FIELD},
    )
    assert error.field == "validation.dataset.storageUri" and "column 'share' holds NaN in row 2 " in error.message


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_too_many_distinct_values_are_refused_with_the_limit(tmp_path: Path, fmt: str) -> None:
    n = MAX_SLICE_VALUES + 1
    error = refused(write(table(n, region=[f"r{i}" for i in range(n)]), tmp_path / f"d.{fmt}"), fmt)
    assert error.field == SLICE_FIELD
    assert f"column 'region' has {n} distinct values, more than the limit of {MAX_SLICE_VALUES} slices" in error.message
    assert (
        len(load(tmp_path / f"d.{fmt}", fmt, slices={}, featureColumns=["a"]).groups) == 0
    )  # the same file without the slice


def test_a_value_too_long_to_name_a_slice_is_refused(tmp_path: Path) -> None:
    long = "x" * (MAX_SLICE_VALUE_CHARS + 1)
    error = refused(write(table(region=["a", long] * 3), tmp_path / "d.parquet"), "parquet")
    assert error.field == SLICE_FIELD
    assert f"a value of {MAX_SLICE_VALUE_CHARS + 1} characters in row 1 " in error.message


def test_a_missing_or_unsliceable_column_is_refused_at_the_slice(tmp_path: Path) -> None:
    path = write(table(tags=pa.array([[1]] * 6)), tmp_path / "d.parquet")
    missing = refused(path, "parquet")
    assert missing.field == SLICE_FIELD and "d.parquet has no column 'region'; its columns are 'a'" in missing.message
    listed = refused(path, "parquet", slices={"tags": SLICE_FIELD}, featureColumns=["a"])
    assert listed.field == SLICE_FIELD and "column 'tags' is of type list<element: int64>" in listed.message


def test_a_repeated_long_string_costs_its_dictionary_not_its_rows(tmp_path: Path) -> None:
    """10,000 rows of one 256-character value (2.56 MB as plain strings) fit a 1 MB budget:
    the file holds it dictionary-encoded, it is read so, and each row refers to the one value."""
    n, value = 10_000, "v" * MAX_SLICE_VALUE_CHARS
    path = tmp_path / "d.parquet"
    pq.write_table(table(n, region=[value] * n), path)
    dataset = Dataset.model_validate({"storageUri": "file:///d", "format": "parquet"})
    limits = Limits(maxDatasetBytes=1_000_000)
    samples = load_dataset(
        path, "parquet", ["input"], limits=limits, dataset=dataset, slice_columns={"region": SLICE_FIELD}
    )
    regions = samples.groups["region"]
    assert regions.dtype == object and len(regions) == n and all(r is regions[0] for r in regions)
    with pytest.raises(JobInputError, match="limits.maxDatasetBytes"):  # the rows' features and indices count in full
        small = Limits(maxDatasetBytes=100_000)
        load_dataset(path, "parquet", ["input"], limits=small, dataset=dataset, slice_columns={"region": SLICE_FIELD})


# --------------------------------------------------------------------------- a whole job


def region_damaged_by_pruning(tmp_path: Path) -> tuple[Path, Path]:
    """A linear classifier that decides amer and apac rows on feature a (weights ±1) and emea
    rows on feature b (weights ±0.01): pruning half its weights by magnitude zeroes b's, so
    emea is left to chance while the average drops by about its share of the rows."""
    w = np.array([[1.0, -1.0], [0.01, -0.01]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "regions",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    rng = np.random.default_rng(0)
    n = 400
    region = rng.choice(["amer", "apac", "emea"], size=n, p=[0.45, 0.45, 0.1])
    sign = rng.choice([-1.0, 1.0], size=n)
    a = np.where(region == "emea", 0.0, sign)
    b = np.where(region == "emea", sign, 0.0)
    label = (sign < 0).astype(np.int64)  # class 0 when the deciding feature is positive
    pq.write_table(pa.table({"region": region, "a": a, "b": b, "label": label}), tmp_path / "val.parquet")
    return tmp_path / "model.onnx", tmp_path / "val.parquet"


def test_a_job_is_rejected_naming_the_region_the_compression_breaks(tmp_path: Path) -> None:
    model, val = region_damaged_by_pruning(tmp_path)
    doc = make_spec(
        model.as_uri(),
        val.as_uri(),
        (tmp_path / "out").as_uri(),
        steps=[{"prune": {"sparsity": 0.5}}],
        maxAccuracyDrop={"absolute": 0.2},
        slices=[REGION],
    )
    doc["spec"]["validation"]["dataset"]["format"] = "parquet"  # every column but label and region: a, b

    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")

    assert summary.outcome == "Rejected", summary.reason
    assert summary.results.baseline.score == 1.0
    (trial,) = json.loads((tmp_path / "out" / summary.recipe_hash / "report.json").read_text())["trials"]
    assert trial["failedThresholds"] == [
        f"slices[0]: slice region=emea: drop {trial['sliceDrops']['region=emea']:.4g} > 0.1"
    ]
    assert trial["sliceDrops"]["region=amer"] == trial["sliceDrops"]["region=apac"] == 0.0
    assert 0.3 < trial["sliceDrops"]["region=emea"] <= 0.7 and 0 < trial["accuracyDrop"] < 0.2
    assert "slices[0]: slice region=emea" in summary.reason
