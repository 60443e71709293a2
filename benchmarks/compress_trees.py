"""Tree compression methods on 500-tree ensembles, beside retraining with fewer trees.

    .venv/bin/python benchmarks/compress_trees.py [--rounds N] [--out PATH]

Data: scikit-learn's bundled digits (1797 images, 64 features, 10 classes), split
50% train / 20% calibration / 30% test (seeded). Models: HistGradientBoostingClassifier
with 500 boosting rounds (10 classes: 5000 ONNX trees) and RandomForestClassifier with
500 trees, converted with skl2onnx (zipmap off) exactly as the job's loaders do.
Compression goes through the job's methods (``pruneEnsemble``, ``pruneTrees``) on the
calibration split, never the test split. "Retrained" rows are the obvious alternative:
the same estimator fitted from scratch with fewer trees on the same training split, then
read and written back by the job's code like every compressed model (that rewrite alone
leaves out zero leaf weights and default attributes: the "rewritten unchanged" rows show
what it saves), so they differ from the compressed rows only in which trees and nodes remain.

Prints accuracy / size / latency at batch 1 and batch 512 (onnxruntime, one intra-op
thread, models interleaved round-robin, medians; see compress_digits.py for why) and
writes benchmarks/results/compress_trees.json. Target: >= 3x faster at both batch sizes
and >= 4x smaller at <= 0.5 accuracy points lost.

One row measures leaf-value quantization (256 levels) instead of building it as a method:
TreeEnsemble stores every weight as a 4-byte float however few distinct values there are,
so neither the file nor onnxruntime's evaluation changes (see the row's numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sklearn
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.model_selection import train_test_split

from modelpress.api import PruneEnsemble, PruneTrees
from modelpress.jobs.dataset import Samples
from modelpress.jobs.methods import MethodData, ModelHandle, get_method
from modelpress.jobs.trees.ensemble import copy_tree, read, write

RESULTS = Path(__file__).parent / "results" / "compress_trees.json"
BATCHES = (1, 512)
TREES = 500
INPUT = "X"  # skl2onnx's input name

# (family, label, [(step key, config)]): each recipe starts from the family's 500-tree source.
RECIPES: list[tuple[str, str, list[tuple[str, object]]]] = [
    ("hgb", "pruneEnsemble 20%", [("pruneEnsemble", PruneEnsemble(fraction=0.2))]),
    (
        "hgb",
        "pruneEnsemble 20% + pruneTrees leafTolerance 0.05",
        [("pruneEnsemble", PruneEnsemble(fraction=0.2)), ("pruneTrees", PruneTrees(leaf_tolerance=0.05))],
    ),
    (
        "hgb",
        "pruneEnsemble 20% + pruneTrees leafTolerance 0.1",
        [("pruneEnsemble", PruneEnsemble(fraction=0.2)), ("pruneTrees", PruneTrees(leaf_tolerance=0.1))],
    ),
    (
        "hgb",
        "pruneEnsemble 20% + pruneTrees leafTolerance 0.1 maxDepth 5",
        [("pruneEnsemble", PruneEnsemble(fraction=0.2)), ("pruneTrees", PruneTrees(leaf_tolerance=0.1, max_depth=5))],
    ),
    ("rf", "pruneEnsemble 20% (ordered aggregation)", [("pruneEnsemble", PruneEnsemble(fraction=0.2))]),
    ("rf", "pruneEnsemble 10% (ordered aggregation)", [("pruneEnsemble", PruneEnsemble(fraction=0.1))]),
]
# The alternative a user has: fit again with fewer trees (and, for boosting, shallower ones).
RETRAINED: dict[str, list[tuple[int, dict[str, int]]]] = {
    "hgb": [(100, {}), (50, {}), (100, {"max_depth": 4})],
    "rf": [(100, {}), (50, {})],
}


def estimator(family: str, trees: int, **params: int):
    if family == "hgb":
        return HistGradientBoostingClassifier(max_iter=trees, early_stopping=False, random_state=0, **params)
    return RandomForestClassifier(n_estimators=trees, n_jobs=1, random_state=0, **params)


def convert(model, x: np.ndarray) -> ModelHandle:
    proto = to_onnx(model, x[:1], options={"zipmap": False})
    return ModelHandle([INPUT], [o.name for o in proto.graph.output], onnx_model=proto)


def lossless(handle: ModelHandle) -> ModelHandle:
    """The model read and written back unchanged: what the job's rewrite alone saves."""
    return handle.with_model(onnx_model=write(handle.proto, read(handle.proto)))


def quantize_leaves(handle: ModelHandle, levels: int = 256) -> ModelHandle:
    """Leaf weights rounded to ``levels`` evenly spaced values (measurement only, see the docstring)."""
    ensemble = read(handle.proto)
    values = np.concatenate([t.value[t.has_weight] for t in ensemble.trees])
    low, high = float(values.min()), float(values.max())
    step = (high - low) / (levels - 1) or 1.0
    trees = []
    for tree in ensemble.trees:
        t = copy_tree(tree)
        t.value = np.where(t.has_weight, low + np.round((t.value - low) / step) * step, 0.0)
        trees.append(t)
    return handle.with_model(onnx_model=write(handle.proto, dataclasses.replace(ensemble, trees=trees)))


def compress(source: ModelHandle, steps, data: MethodData) -> tuple[ModelHandle, list]:
    handle, changes = source, []
    for key, config in steps:
        result = get_method(key).apply(handle, config, data)
        handle, changes = result.model, [*changes, {key: result.changes}]
    return handle, changes


def session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def time_all(sessions: dict[str, ort.InferenceSession], x: np.ndarray, rounds: int) -> dict[str, dict[int, float]]:
    """Median milliseconds per batch for each model and batch size, interleaved round-robin."""
    feeds = {b: {INPUT: np.ascontiguousarray(x[:b])} for b in BATCHES}
    repeats = {1: 20, 512: 1}
    for s in sessions.values():  # warm-up
        for b in BATCHES:
            for _ in range(3):
                s.run(None, feeds[b])
    samples: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in sessions}
    order = list(sessions)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            for b in BATCHES:
                start = time.perf_counter()
                for _ in range(repeats[b]):
                    sessions[name].run(None, feeds[b])
                samples[name][b].append((time.perf_counter() - start) * 1000 / repeats[b])
    return {n: {b: statistics.median(v) for b, v in per.items()} for n, per in samples.items()}


def digits_split() -> tuple[np.ndarray, ...]:
    """Bundled digits, stratified and seeded: 50% train, 20% calibration (the methods' data), 30% test,
    as (x_train, y_train, x_cal, y_cal, x_test, y_test)."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=0.5, random_state=0, stratify=y)
    x_cal, x_test, y_cal, y_test = train_test_split(x_rest, y_rest, test_size=0.6, random_state=0, stratify=y_rest)
    return x_train, y_train, x_cal, y_cal, x_test, y_test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds per model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    x_train, y_train, x_cal, y_cal, x_test, y_test = digits_split()
    calibration = Samples([{INPUT: row} for row in x_cal], y_cal)
    data = MethodData(task="classification", train=calibration, calibration=calibration, seed=0)

    models: dict[str, tuple[str, ModelHandle, list, float]] = {}  # label -> (family, handle, changes, seconds)
    for family in ("hgb", "rf"):
        t0 = time.perf_counter()
        source = convert(estimator(family, TREES).fit(x_train, y_train), x_train)
        seconds = time.perf_counter() - t0
        models[f"{family} {TREES} (source)"] = (family, source, [], seconds)
        print(f"{family}: trained + converted {TREES} trees in {seconds:.0f}s", file=sys.stderr)
        for fam, label, steps in RECIPES:
            if fam == family:
                t0 = time.perf_counter()
                handle, changes = compress(source, steps, data)
                models[f"{family} {label}"] = (family, handle, changes, time.perf_counter() - t0)
                print(f"{family} {label}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        for trees, params in RETRAINED[family]:
            t0 = time.perf_counter()
            handle = lossless(convert(estimator(family, trees, **params).fit(x_train, y_train), x_train))
            extra = "".join(f", {k} {v}" for k, v in params.items())
            models[f"{family} retrained {trees}{extra}, rewritten"] = (family, handle, [], time.perf_counter() - t0)
        # What the rewrite alone gives (same trees; zero weights and default attributes left out).
        models[f"{family} {TREES} rewritten unchanged (lossless)"] = (family, lossless(source), [], 0.0)
        models[f"{family} leaf values 256 levels (measured, not built)"] = (family, quantize_leaves(source), [], 0.0)

    sessions = {label: session(h.proto) for label, (_, h, _, _) in models.items()}
    latency = time_all(sessions, x_test, args.rounds)
    rows = []
    for label, (family, handle, changes, seconds) in models.items():
        probabilities = sessions[label].run(None, {INPUT: x_test})[-1]
        serialized = handle.proto.SerializeToString()
        ensemble = read(handle.proto)
        rows.append(
            {
                "family": family,
                "method": label,
                "trees": ensemble.n_trees,
                "nodes": ensemble.n_nodes,
                "accuracy": float((probabilities.argmax(1) == y_test).mean()),
                "sizeBytes": len(serialized),
                "gzipBytes": len(zlib.compress(serialized, 6)),
                "latencyMs": {f"batch{b}": round(latency[label][b], 4) for b in BATCHES},
                "seconds": round(seconds, 1),
                "changes": changes,
            }
        )
    for row in rows:
        base = next(r for r in rows if r["family"] == row["family"] and r["method"].endswith("(source)"))
        row["accuracyDropPoints"] = round(100 * (base["accuracy"] - row["accuracy"]), 2)
        row["sizeRatio"] = round(row["sizeBytes"] / base["sizeBytes"], 4)
        row["speedup"] = {k: round(base["latencyMs"][k] / v, 2) for k, v in row["latencyMs"].items()}
        row["meetsTarget"] = (
            min(row["speedup"].values()) >= 3.0 and row["sizeRatio"] <= 0.25 and row["accuracyDropPoints"] <= 0.5
        )

    print(
        f"{'model':62} {'trees':>5} {'nodes':>7} {'acc':>7} {'drop pt':>7} {'KiB':>7} {'ratio':>6} "
        f"{'b1 ms':>7} {'b1 x':>5} {'b512 ms':>8} {'b512 x':>6} {'target':>6}"
    )
    for r in rows:
        print(
            f"{r['method']:62} {r['trees']:5d} {r['nodes']:7d} {r['accuracy']:7.4f} {r['accuracyDropPoints']:7.2f} "
            f"{r['sizeBytes'] / 1024:7.0f} {r['sizeRatio']:6.3f} {r['latencyMs']['batch1']:7.3f} "
            f"{r['speedup']['batch1']:5.2f} {r['latencyMs']['batch512']:8.2f} {r['speedup']['batch512']:6.2f} "
            f"{'MET' if r['meetsTarget'] else '-':>6}"
        )
    met = {
        family: [r["method"] for r in rows if r["family"] == family and r["meetsTarget"] and r["changes"]]
        for family in ("hgb", "rf")
    }
    for family, labels in met.items():
        print(f"target (>= 3x faster at batch 1 and 512, >= 4x smaller, <= 0.5 pt) for {family}: {labels or 'NOT MET'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "compress_trees",
                "data": "sklearn digits, 50% train / 20% calibration (the methods' data) / 30% test, seed 0",
                "testSamples": len(y_test),
                "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 intra-op thread",
                "sklearn": sklearn.__version__,
                "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
                "timing": f"median of {args.rounds} interleaved rounds per model and batch size",
                "targetMet": {family: bool(labels) for family, labels in met.items()},
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
