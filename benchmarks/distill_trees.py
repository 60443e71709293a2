"""Distillation across architectures: an MLP teacher into GBDT / forest students, a forest into an MLP.

    .venv/bin/python benchmarks/distill_trees.py [--rounds N] [--out PATH]

Data: scikit-learn's bundled digits (1797 images, 64 features, 10 classes), split 50%
train / 20% calibration / 30% test (seeded, the split of compress_trees.py). Teachers,
fitted on the train split and converted with skl2onnx (zipmap off) as a user would bring
them as ONNX sources: an MLP (StandardScaler + MLPClassifier 512-256) and a 500-tree
RandomForest. Students go through the job's ``distill`` method with the train split as
its data (what ``validation.calibration`` would hold; the test split is never seen), so
the teacher's soft outputs on the data it was fitted on are what the student learns.
"Trained on labels" rows are the obvious alternative: the same tree model fitted on the
same split's labels alone, converted the same way.

Prints accuracy, agreement with the teacher, size and latency at batch 1 and batch 512
(onnxruntime, one intra-op thread, models interleaved round-robin, medians; see
compress_digits.py for why) side by side, and writes benchmarks/results/distill_trees.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sklearn
from skl2onnx import to_onnx
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelpress.api import Distill
from modelpress.jobs.dataset import Samples
from modelpress.jobs.methods import MethodData, ModelHandle, get_method
from modelpress.jobs.trees.loaders import tree_outputs

RESULTS = Path(__file__).parent / "results" / "distill_trees.json"
# The same models, input name, batch sizes and interleaved timing as compress_trees.py (run as a
# script: this folder is on sys.path); the students keep skl2onnx's input name.
from compress_trees import BATCHES, INPUT, digits_split, session, time_all  # noqa: E402

# (teacher, label, distill config): each student is distilled from its teacher.
STUDENTS: list[tuple[str, str, dict]] = [
    ("mlp", "GBDT student 30 rounds, depth 3", {"student": {"trees": {"trees": 30, "maxDepth": 3}}}),
    ("mlp", "GBDT student 100 rounds, depth 4", {"student": {"trees": {"trees": 100, "maxDepth": 4}}}),
    ("mlp", "GBDT student 200 rounds, depth 6", {"student": {"trees": {"trees": 200, "maxDepth": 6}}}),
    (
        "mlp",
        "forest student 100 trees, depth 12",
        {"student": {"trees": {"kind": "randomForest", "trees": 100, "maxDepth": 12}}},
    ),
    ("rf", "MLP student 128-64", {"student": {"mlp": {"hidden": [128, 64]}}, "epochs": 100, "learningRate": 3e-3}),
]
# The alternative: the same tree model fitted on the labels alone.
ON_LABELS: list[tuple[str, str, object]] = [
    (
        "mlp",
        "HistGradientBoosting 100 rounds, depth 4, trained on labels",
        HistGradientBoostingClassifier(max_iter=100, max_depth=4, max_leaf_nodes=None, early_stopping=False),
    ),
    (
        "mlp",
        "RandomForest 100 trees, depth 12, trained on labels",
        RandomForestClassifier(100, max_depth=12, random_state=0),
    ),
]


def convert(model, x: np.ndarray) -> ModelHandle:
    """The fitted estimator as the job loads an ONNX source: one input, the probabilities output."""
    proto = to_onnx(model, x[:1], options={"zipmap": False})
    if any(n.op_type == "TreeEnsembleClassifier" for n in proto.graph.node):
        proto = tree_outputs(proto)
    else:
        keep = [o for o in proto.graph.output if o.name == "probabilities"]
        del proto.graph.output[:]
        proto.graph.output.extend(keep)
    return ModelHandle([INPUT], [proto.graph.output[0].name], onnx_model=proto)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds per model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    x_train, y_train, _, _, x_test, y_test = digits_split()
    train = Samples([{INPUT: row} for row in x_train], y_train)
    data = MethodData(task="classification", train=train, calibration=train, seed=0)

    teachers = {
        "mlp": make_pipeline(StandardScaler(), MLPClassifier((512, 256), max_iter=300, random_state=0)),
        "rf": RandomForestClassifier(500, random_state=0),
    }
    # label -> (teacher, handle, changes, seconds)
    models: dict[str, tuple[str, ModelHandle, dict, float]] = {}
    for name, estimator in teachers.items():
        t0 = time.perf_counter()
        models[f"{name} teacher"] = (name, convert(estimator.fit(x_train, y_train), x_train), {}, 0.0)
        print(f"{name} teacher: trained + converted in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    for teacher, label, config in STUDENTS:
        t0 = time.perf_counter()
        result = get_method("distill").apply(models[f"{teacher} teacher"][1], Distill.model_validate(config), data)
        models[label] = (teacher, result.model, result.changes, time.perf_counter() - t0)
        print(f"{label}: {time.perf_counter() - t0:.1f}s {result.changes}", file=sys.stderr)
    for teacher, label, estimator in ON_LABELS:
        t0 = time.perf_counter()
        models[label] = (teacher, convert(estimator.fit(x_train, y_train), x_train), {}, time.perf_counter() - t0)

    sessions = {label: session(h.proto) for label, (_, h, _, _) in models.items()}
    latency = time_all(sessions, x_test, args.rounds)
    predictions = {label: s.run(None, {INPUT: x_test})[0].argmax(1) for label, s in sessions.items()}
    rows = []
    for label, (teacher, handle, changes, seconds) in models.items():
        base = f"{teacher} teacher"
        rows.append(
            {
                "teacher": teacher,
                "model": label,
                "accuracy": round(float((predictions[label] == y_test).mean()), 4),
                "agreement": round(float((predictions[label] == predictions[base]).mean()), 4),
                "sizeBytes": len(handle.proto.SerializeToString()),
                "latencyMs": {f"batch{b}": round(latency[label][b], 4) for b in BATCHES},
                "speedup": {f"batch{b}": round(latency[base][b] / latency[label][b], 2) for b in BATCHES},
                "accuracyDropPoints": round(
                    100 * float((predictions[base] == y_test).mean() - (predictions[label] == y_test).mean()), 2
                ),
                "seconds": round(seconds, 1),
                "changes": changes,
            }
        )

    print(
        f"{'model':58} {'acc':>7} {'drop pt':>7} {'agree':>6} {'KiB':>7} "
        f"{'b1 ms':>7} {'b1 x':>6} {'b512 ms':>8} {'b512 x':>6}"
    )
    for r in rows:
        print(
            f"{r['model']:58} {r['accuracy']:7.4f} {r['accuracyDropPoints']:7.2f} {r['agreement']:6.3f} "
            f"{r['sizeBytes'] / 1024:7.0f} {r['latencyMs']['batch1']:7.3f} {r['speedup']['batch1']:6.2f} "
            f"{r['latencyMs']['batch512']:8.2f} {r['speedup']['batch512']:6.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "distill_trees",
                "data": "sklearn digits, 50% train (teachers' fit and the students' distillation data) / "
                "30% test, seed 0",
                "testSamples": len(y_test),
                "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 intra-op thread",
                "sklearn": sklearn.__version__,
                "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
                "timing": f"median of {args.rounds} interleaved rounds per model and batch size",
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
