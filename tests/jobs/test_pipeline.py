"""The pipeline: gate rules, candidate generation, metrics, and whole jobs on a real
digits model (torch.export and ONNX sources, recipe and accuracy-aware search)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import onnx
import pytest
from sklearn.metrics import f1_score

from modelpress.api import ModelMetrics, Step, Validation
from modelpress.jobs import gate
from modelpress.jobs.artifact import CONFIG_RELPATH, MODEL_RELPATH
from modelpress.jobs.entrypoint import load_spec
from modelpress.jobs.measure import score_outputs
from modelpress.jobs.pipeline import candidates, run

from .conftest import make_spec, write_spec


def validation(**kw) -> Validation:
    base = {
        "dataset": {"storageUri": "file:///v.npz", "format": "npz"},
        "metric": "accuracy",
        "maxAccuracyDrop": {"absolute": 0.005},
    }
    base.update(kw)
    return Validation.model_validate(base)


BASE = ModelMetrics(score=0.95, latency_p50_ms=2.0, latency_p95_ms=3.0, size_bytes=4_000_000)


# --------------------------------------------------------------------------- gate


def test_gate_names_each_broken_threshold_with_value_and_limit() -> None:
    cand = ModelMetrics(score=0.919, latency_p50_ms=1.6, latency_p95_ms=2.5, size_bytes=1_200_000)
    result = gate.evaluate(validation(minSpeedup=1.5, maxLatencyMs=2.0, maxSizeMB=1.0), BASE, cand)
    assert not result.passed
    assert result.failed == [
        "maxAccuracyDrop: drop 0.031 > 0.005 (absolute)",
        "minSpeedup: speedup 1.25x < 1.5x",
        "maxLatencyMs: p95 2.5 ms > 2 ms",
        "maxSizeMB: 1.2 MB > 1 MB",
    ]
    assert result.speedup == pytest.approx(1.25) and result.size_ratio == pytest.approx(0.3)


def test_gate_passes_within_every_limit() -> None:
    cand = ModelMetrics(score=0.948, latency_p50_ms=1.0, latency_p95_ms=1.5, size_bytes=900_000)
    result = gate.evaluate(validation(minSpeedup=1.5, maxLatencyMs=2.0, maxSizeMB=1.0), BASE, cand)
    assert result.passed and result.failed == []
    assert result.accuracy_drop == pytest.approx(0.002)


def test_gate_relative_budget() -> None:
    v = validation(maxAccuracyDrop={"relative": 0.01})
    assert gate.evaluate(v, BASE, ModelMetrics(score=0.945)).passed  # 0.53% of 0.95
    failed = gate.evaluate(v, BASE, ModelMetrics(score=0.93)).failed
    assert failed == ["maxAccuracyDrop: drop 0.02105 > 0.01 (relative; 0.02 accuracy)"]


def test_gate_mse_is_lower_is_better() -> None:
    v = validation(metric="mse", maxAccuracyDrop={"absolute": 0.1})
    base = ModelMetrics(score=1.0)
    assert gate.evaluate(v, base, ModelMetrics(score=0.5)).passed  # lower error is no drop
    result = gate.evaluate(v, base, ModelMetrics(score=1.3))
    assert result.accuracy_drop == pytest.approx(0.3)
    assert result.failed == ["maxAccuracyDrop: drop 0.3 > 0.1 (absolute)"]


# --------------------------------------------------------------------------- metrics


def test_scores() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 200)
    assert score_outputs("accuracy", logits, labels, logits) == np.mean(logits.argmax(1) == labels)
    assert score_outputs("f1", logits, labels, logits) == pytest.approx(
        f1_score(labels, logits.argmax(1), average="macro")
    )
    top5 = np.argsort(-logits, 1)[:, :5]
    assert score_outputs("top5", logits, labels, logits) == np.mean([labels[i] in top5[i] for i in range(200)])
    assert score_outputs("cosine", logits, None, logits) == pytest.approx(1.0)
    assert score_outputs("cosine", -logits, None, logits) == pytest.approx(-1.0)
    assert score_outputs("mse", logits, None, logits + 0.5) == pytest.approx(0.25)
    targets = rng.normal(size=(200, 10))
    assert score_outputs("mse", logits, targets, logits) == pytest.approx(np.mean((logits - targets) ** 2))


# --------------------------------------------------------------------------- candidates


def steps(*raw: dict) -> list[Step]:
    return [Step.model_validate(s) for s in raw]


def test_without_search_only_the_recipe_runs() -> None:
    cands = candidates(steps({"prune": {"sparsity": 0.8}}, {"quantize": {}}), search=False, max_trials=8)
    assert len(cands) == 1 and cands[0].levels == (0, 0)


def test_search_relaxes_one_step_at_a_time_then_all() -> None:
    cands = candidates(steps({"prune": {"sparsity": 0.8}}, {"quantize": {}}), search=True, max_trials=64)
    first = cands[0]
    assert first.levels == (0, 0)
    sparsities = [c.variants[0].config.sparsity for c in cands]
    assert sparsities[:3] == [0.8, 0.6, 0.8]  # rung 1: prune milder, then quantize milder
    assert [c.variants[1].exclude_top for c in cands[:3]] == [0, 0, 1]
    assert {0.8, 0.6, 0.4, 0.2} == set(sparsities)
    assert any(c.variants[1].config.per_channel for c in cands)
    assert cands[-1].levels == (3, 3)  # everything at its mildest
    assert all(c.milder_than(first) for c in cands[1:] if any(c.levels))
    assert len(candidates(steps({"prune": {"sparsity": 0.8}}, {"quantize": {}}), True, max_trials=3)) == 3


def test_low_rank_ladder_keeps_more() -> None:
    cands = candidates(steps({"lowRank": {"energy": 0.8}}), search=True, max_trials=8)
    assert [c.variants[0].config.energy for c in cands] == [0.8, 0.9, 0.95]
    cands = candidates(steps({"lowRank": {"rankRatio": 0.25}}), search=True, max_trials=8)
    assert [c.variants[0].config.rank_ratio for c in cands] == [0.25, 0.375, 0.5]


# --------------------------------------------------------------------------- whole jobs


def job(tmp_path: Path, doc: dict):
    return run(load_spec(write_spec(tmp_path / "cm.yaml", doc)), tmp_path / "work")


def test_torch_source_prune_then_quantize(tmp_path: Path, digits_dir: Path) -> None:
    out = tmp_path / "out"
    doc = make_spec(
        (digits_dir / "model.pt2").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        out.as_uri() + "/",
        fmt="pytorch-export",
        calibration_uri=(digits_dir / "calib.npz").as_uri(),
        steps=[
            {"prune": {"structure": "neurons", "sparsity": 0.25, "fineTuneEpochs": 2}},
            {"quantize": {"mode": "dynamic"}},
        ],
        maxAccuracyDrop={"absolute": 0.05},
    )
    result = job(tmp_path, doc)
    summary = result.summary
    assert summary.outcome == "Validated", summary.reason
    results = summary.results
    assert results.trials == 1
    assert results.compressed.parameters < results.baseline.parameters
    assert results.compressed.size_bytes < results.baseline.size_bytes
    assert results.chosen_recipe[0]["prune"]["sparsity"] == 0.25
    assert "CPU:" in results.hardware and "onnxruntime" in results.hardware
    # Speedup comes from baseline and candidate timed side by side in one run, and the
    # baseline reported next to it is that same run's.
    assert results.speedup == pytest.approx(results.baseline.latency_p50_ms / results.compressed.latency_p50_ms)

    art = out / summary.recipe_hash
    assert summary.artifact.storage_uri == (out.as_uri() + "/" + summary.recipe_hash)
    model_bytes = (art / MODEL_RELPATH).read_bytes()
    assert hashlib.sha256(model_bytes).hexdigest() == summary.artifact.sha256
    assert summary.artifact.size_bytes == len(model_bytes)
    graph = onnx.load_from_string(model_bytes).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    config = (art / CONFIG_RELPATH).read_text()
    assert 'name: "model"' in config and 'name: "input"' in config and "dims: [ -1, 64 ]" in config

    report = json.loads((art / "report.json").read_text())
    assert report["recipeHash"] == summary.recipe_hash and report["outcome"] == "Validated"
    assert report["baseline"]["score"] == results.baseline.score
    assert report["trials"][0]["changes"][0]["prune"]["structure"] == "neurons"
    trial = report["trials"][0]
    assert trial["baselineMetrics"]["latencyP50Ms"] == results.baseline.latency_p50_ms
    assert trial["speedup"] == pytest.approx(
        trial["baselineMetrics"]["latencyP50Ms"] / trial["metrics"]["latencyP50Ms"]
    )
    html = (art / "report.html").read_text()
    assert html.count('<polygon class="baseline"') == 2 and html.count('<circle class="trial"') == 2
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    charts = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(charts) == 2
    for chart in charts:  # well-formed SVG: one baseline diamond and one ringed (chosen) trial each
        root = ElementTree.fromstring(chart)
        ns = "{http://www.w3.org/2000/svg}"
        assert len(root.findall(f"{ns}polygon")) == 1
        assert [c.get("stroke") for c in root.findall(f"{ns}circle")] == ["#000"]
    assert len(summary.to_termination_message().encode()) <= 4096


def test_search_finds_a_milder_recipe_when_the_asked_one_fails(tmp_path: Path, digits_dir: Path) -> None:
    """Unstructured 95% pruning of a 64-unit MLP without fine-tuning ruins it; milder passes."""
    doc = make_spec(
        (digits_dir / "model.onnx").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        (tmp_path / "out").as_uri(),
        calibration_uri=(digits_dir / "calib.npz").as_uri(),
        steps=[{"prune": {"sparsity": 0.95}}],
        search={"enabled": True, "maxTrials": 4, "objective": "size"},
        maxAccuracyDrop={"absolute": 0.03},
    )
    result = job(tmp_path, doc)
    trials = result.report["trials"]
    assert trials[0]["passed"] is False
    assert trials[0]["failedThresholds"][0].startswith("maxAccuracyDrop: drop ")
    assert result.summary.outcome == "Validated", result.summary.reason
    chosen = trials[result.report["chosenTrial"]]
    assert chosen["passed"] and chosen["recipe"][0]["prune"]["sparsity"] < 0.95
    # the first passing rung is the most pruned one that passes: nothing milder was tried after it
    assert trials[-1] is chosen and len(trials) < 4
    assert [t["recipe"][0]["prune"]["sparsity"] for t in trials] == [0.95, 0.712, 0.475][: len(trials)]


def test_gate_confidence_bound_and_label_slices_reach_the_report(tmp_path: Path, digits_dir: Path) -> None:
    """validation.confidence and slices through the whole job: the bound and the slice drops
    in report.json and the status results, the interval in report.html's drop column."""
    from modelpress.jobs.entrypoint import run_job

    doc = make_spec(
        (digits_dir / "model.onnx").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        (tmp_path / "out").as_uri(),
        maxAccuracyDrop={"absolute": 0.05},
        confidence=0.95,
        slices=[{"by": "label", "maxAccuracyDrop": 0.5}],
    )
    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    assert summary.outcome == "Validated", summary.reason
    art = tmp_path / "out" / summary.recipe_hash
    (trial,) = json.loads((art / "report.json").read_text())["trials"]
    labels = np.load(digits_dir / "val.npz")["y"]
    assert trial["accuracyDrop"] <= trial["accuracyDropBound"] <= 0.05
    assert set(trial["sliceDrops"]) == {f"label={c}" for c in np.unique(labels)}
    assert summary.results.accuracy_drop_bound == trial["accuracyDropBound"]
    interval = f"{trial['accuracyDrop']:.4g} [95% upper {trial['accuracyDropBound']:.4g}]"
    assert f'<td class="n">{interval}</td>' in (art / "report.html").read_text()


def test_rejected_with_the_closest_trials_thresholds(tmp_path: Path, digits_dir: Path) -> None:
    doc = make_spec(
        (digits_dir / "model.onnx").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        (tmp_path / "out").as_uri(),
        calibration_uri=(digits_dir / "calib.npz").as_uri(),
        search={"enabled": True, "maxTrials": 3},
        maxSizeMB=0.001,
    )
    result = job(tmp_path, doc)
    summary = result.summary
    assert summary.outcome == "Rejected" and summary.exit_code == 3
    assert len(result.report["trials"]) == 3
    assert summary.results.failed_thresholds and all(
        f.startswith("maxSizeMB: ") for f in summary.results.failed_thresholds
    )
    assert "no candidate met the thresholds (3 trials); closest: maxSizeMB: " in summary.reason
    assert summary.artifact is None
    art = tmp_path / "out" / summary.recipe_hash
    assert (art / "report.json").exists() and not (art / MODEL_RELPATH).exists()


def test_quantize_search_ranks_sensitive_nodes(tmp_path: Path, digits_dir: Path) -> None:
    """With every candidate failing, the search walks the quantize ladder: smoothing first
    (calibration data exists), then keeping the most sensitive MatMul/Gemm nodes in float
    on top of smoothing, but never all of them."""
    doc = make_spec(
        (digits_dir / "model.onnx").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        (tmp_path / "out").as_uri(),
        calibration_uri=(digits_dir / "calib.npz").as_uri(),
        search={"enabled": True, "maxTrials": 6},
        maxLatencyMs=1e-6,
    )
    result = job(tmp_path, doc)
    trials = result.report["trials"]
    recipes = [t["recipe"][0]["quantize"] for t in trials]
    graph = onnx.load(str(digits_dir / "model.onnx")).graph
    quantizable = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")}
    assert len(quantizable) == 2  # the test model: one hidden layer
    assert [r["smoothing"] for r in recipes[:5]] == [None, 0.75, 0.5, 0.75, None]
    assert [len(r["excludeNodes"]) for r in recipes[:5]] == [0, 0, 0, 1, 0]
    assert [r["perChannel"] for r in recipes[:5]] == [False, True, True, True, True]
    assert [t["changes"][0]["quantize"].get("smoothedActivations") for t in trials[1:3]] == [2, 2]
    sensitivity = result.report["quantizationSensitivity"]
    assert set(sensitivity) == quantizable and all(e > 0 for e in sensitivity.values())
    assert recipes[3]["excludeNodes"] == list(sensitivity)[:1]  # the most sensitive stays in float
    assert trials[5]["metrics"] is None and "keeping 2 in float would quantize nothing" in trials[5]["reason"]


def test_search_pre_processes_the_graph_once(tmp_path: Path, digits_dir: Path, monkeypatch) -> None:
    """Every quantize variant and every sensitivity-ranking trial reuses one pre-processed graph."""
    import onnxruntime.quantization as ortq

    calls: list[str] = []
    real = ortq.quant_pre_process

    def counted(*args, **kwargs):
        calls.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quant_pre_process", counted)
    doc = make_spec(
        (digits_dir / "model.onnx").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        (tmp_path / "out").as_uri(),
        calibration_uri=(digits_dir / "calib.npz").as_uri(),
        search={"enabled": True, "maxTrials": 5},
        maxLatencyMs=1e-6,
    )
    trials = job(tmp_path, doc).report["trials"]
    assert len(trials) == 5 and sum(bool(t["recipe"][0]["quantize"]["excludeNodes"]) for t in trials) == 1
    assert len(calls) == 1, calls


def test_smoothing_rungs_need_calibration_data() -> None:
    recipe = steps({"quantize": {"mode": "dynamic"}})
    plain = candidates(recipe, search=True, max_trials=64)
    assert all(c.variants[0].config.smoothing is None for c in plain)
    smoothed = candidates(recipe, search=True, max_trials=64, calibrated=True)
    assert [c.variants[0].config.smoothing for c in smoothed[:3]] == [None, 0.75, 0.5]
    assert [c.levels for c in smoothed[:3]] == [(0,), (0,), (0,)]  # as compressed as asked
    keep_float = [c for c in smoothed if c.variants[0].exclude_top]
    assert keep_float and all(c.variants[0].config.smoothing == 0.75 for c in keep_float)
    assert all(c.milder_than(smoothed[1]) for c in keep_float)  # skipped once smoothing passes
    fp16 = candidates(steps({"quantize": {"mode": "fp16"}}), search=True, max_trials=64, calibrated=True)
    assert all(c.variants[0].config.smoothing is None for c in fp16)


def test_excluded_nodes_survive_the_quantizers_fusions(tmp_path: Path, digits_dir: Path) -> None:
    """lowRank leaves MatMul+Add pairs that ORT's pre-processing fuses and renames; the
    search ranks nodes on the pre-processed graph, so its excludeNodes still exist."""
    doc = make_spec(
        (digits_dir / "model.onnx").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        (tmp_path / "out").as_uri(),
        calibration_uri=(digits_dir / "calib.npz").as_uri(),
        steps=[{"lowRank": {"energy": 0.9}}, {"quantize": {"mode": "dynamic"}}],
        search={"enabled": True, "maxTrials": 6},
        maxLatencyMs=1e-6,
    )
    trials = job(tmp_path, doc).report["trials"]
    assert len(trials) == 6
    assert all(t["metrics"] is not None for t in trials), [t["reason"] for t in trials]
    # rungs: lowRank milder, smoothing 0.75, lowRank mildest, smoothing 0.5, then one node in float
    assert [len(t["recipe"][1]["quantize"]["excludeNodes"]) for t in trials] == [0, 0, 0, 0, 0, 1]


def test_npz_arrays_named_after_model_inputs(tmp_path: Path) -> None:
    from modelpress.jobs.data import load_dataset

    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.savez(tmp_path / "d.npz", input_ids=ids, attention_mask=np.ones_like(ids), y=np.array([0, 1, 0]))
    samples = load_dataset(tmp_path / "d.npz", "npz", ["input_ids", "attention_mask"])
    assert len(samples) == 3 and samples.input_names == ["input_ids", "attention_mask"]
    assert (samples.features[1]["input_ids"] == ids[1]).all() and list(samples.labels) == [0, 1, 0]
