"""Every compression method on the digits MLP (64 -> 1024 -> 1024 -> 10), side by side.

    .venv/bin/python benchmarks/compress_digits.py [--rounds N] [--out PATH]

Prints accuracy / size / latency at batch 1 and batch 512 (onnxruntime, one intra-op
thread) and writes benchmarks/results/compress_digits.json. Target: structured
pruning runs >= 2x faster at batch 512 for <= 0.5 accuracy points.

Timing is done here rather than with ``modelpress.jobs.measure`` on purpose: to compare
a dozen models on a shared machine we interleave them round-robin (each round runs
every model once, in a fresh random order) and report medians, so background load hits
all of them alike instead of whichever model happened to run during it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from modelpress.api import Distill, LowRank, Prune, Quantize
from modelpress.jobs.examples.digits import INPUT_NAME, OUTPUT_NAME, train_digits_mlp
from modelpress.jobs.export import to_onnx
from modelpress.jobs.methods import MethodData, ModelHandle, get_method

RESULTS = Path(__file__).parent / "results" / "compress_digits.json"
BATCHES = (1, 512)

# (label, [(step key, config)]): each recipe starts from the trained float model.
RECIPES: list[tuple[str, list[tuple[str, object]]]] = [
    ("quantize dynamic int8", [("quantize", Quantize(mode="dynamic"))]),
    ("quantize static int8 (QDQ)", [("quantize", Quantize(mode="static", per_channel=True))]),
    ("quantize fp16", [("quantize", Quantize(mode="fp16"))]),
    ("quantize int4 weight-only", [("quantize", Quantize(mode="int4-weight-only", block_size=32))]),
    ("prune unstructured 70%", [("prune", Prune(sparsity=0.7, fine_tune_epochs=2))]),
    ("prune neurons 60% +ft3", [("prune", Prune(structure="neurons", sparsity=0.6, fine_tune_epochs=3))]),
    ("prune neurons 75% +ft3", [("prune", Prune(structure="neurons", sparsity=0.75, fine_tune_epochs=3))]),
    ("lowRank energy 0.9", [("lowRank", LowRank(energy=0.9))]),
    ("lowRank rank 25%", [("lowRank", LowRank(rank_ratio=0.25))]),
    ("distill width 0.25 (10 ep)", [("distill", Distill(student={"width_multiplier": 0.25}, epochs=10))]),
    (
        "prune neurons 60% +ft3 + dynamic int8",
        [
            ("prune", Prune(structure="neurons", sparsity=0.6, fine_tune_epochs=3)),
            ("quantize", Quantize(mode="dynamic")),
        ],
    ),
]


def session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def compress(source: ModelHandle, steps, data: MethodData, sample: dict[str, np.ndarray]) -> tuple[ModelHandle, list]:
    handle, changes = source, []
    for key, config in steps:
        method = get_method(key)
        if handle.stage not in method.stages:
            handle = to_onnx(handle, sample)
        result = method.apply(handle, config, data)
        handle, changes = result.model, [*changes, {key: result.changes}]
    if handle.stage == "torch":
        handle = to_onnx(handle, sample)
    return handle, changes


def time_all(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, rounds: int, seed: int = 0
) -> dict[str, dict[int, float]]:
    """Median milliseconds per batch for each model and batch size, interleaved round-robin."""
    feeds = {b: {INPUT_NAME: np.ascontiguousarray(x[:b])} for b in BATCHES}
    repeats = {1: 50, 512: 1}  # batch 1 is ~0.1 ms: time 50 back-to-back calls per sample
    for s in sessions.values():  # warm-up
        for b in BATCHES:
            for _ in range(5):
                s.run(None, feeds[b])
    samples: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in sessions}
    order = list(sessions)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            for b in BATCHES:
                start = time.perf_counter()
                for _ in range(repeats[b]):
                    sessions[name].run(None, feeds[b])
                samples[name][b].append((time.perf_counter() - start) * 1000 / repeats[b])
    return {n: {b: statistics.median(v) for b, v in per.items()} for n, per in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds per model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    started = time.perf_counter()
    module, train, val = train_digits_mlp(seed=0)
    x_val = np.stack([f[INPUT_NAME] for f in val.features])
    sample = {INPUT_NAME: x_val[:8]}
    source = ModelHandle([INPUT_NAME], [OUTPUT_NAME], module=module, dynamic_axes={INPUT_NAME: {0: "batch"}})
    data = MethodData(task="classification", train=train, calibration=train.take(200), seed=0)
    print(f"trained 64-1024-1024-10 MLP in {time.perf_counter() - started:.0f}s", file=sys.stderr)

    models = {"baseline (float32)": (to_onnx(source, sample), [])}
    for label, steps in RECIPES:
        t0 = time.perf_counter()
        models[label] = compress(source, steps, data, sample)
        print(f"{label}: compressed in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    sessions = {label: session(h.onnx_model) for label, (h, _) in models.items()}
    latency = time_all(sessions, x_val, args.rounds)
    rows = []
    for label, (handle, changes) in models.items():
        logits = sessions[label].run(None, {INPUT_NAME: x_val})[0]
        rows.append(
            {
                "method": label,
                "accuracy": float((logits.argmax(1) == val.labels).mean()),
                "sizeBytes": len(handle.onnx_model.SerializeToString()),
                "latencyMs": {f"batch{b}": round(latency[label][b], 4) for b in BATCHES},
                "changes": changes,
            }
        )
    base = rows[0]
    for row in rows:
        row["accuracyDropPoints"] = round(100 * (base["accuracy"] - row["accuracy"]), 2)
        row["sizeRatio"] = round(row["sizeBytes"] / base["sizeBytes"], 3)
        row["speedup"] = {k: round(base["latencyMs"][k] / v, 2) for k, v in row["latencyMs"].items()}

    print(
        f"{'method':40} {'acc':>7} {'drop pt':>7} {'size KiB':>9} {'ratio':>6} "
        f"{'b1 ms':>8} {'b1 x':>6} {'b512 ms':>8} {'b512 x':>7}"
    )
    for r in rows:
        print(
            f"{r['method']:40} {r['accuracy']:7.4f} {r['accuracyDropPoints']:7.2f} {r['sizeBytes'] / 1024:9.0f} "
            f"{r['sizeRatio']:6.3f} {r['latencyMs']['batch1']:8.4f} {r['speedup']['batch1']:6.2f} "
            f"{r['latencyMs']['batch512']:8.3f} {r['speedup']['batch512']:7.2f}"
        )
    target = next(r for r in rows if r["method"] == "prune neurons 60% +ft3")
    met = target["speedup"]["batch512"] >= 2.0 and target["accuracyDropPoints"] <= 0.5
    print(f"target (neurons 60%: >= 2x at batch 512, <= 0.5 pt): {'MET' if met else 'NOT MET'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "compress_digits",
                "model": "digits MLP 64-1024-1024-10, sklearn digits 70/30 split, seed 0",
                "validationSamples": len(val),
                "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 intra-op thread",
                "torch": torch.__version__,
                "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
                "timing": f"median of {args.rounds} interleaved rounds per model and batch size",
                "targetMet": met,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
