"""Batch prediction benchmark: rows/s of ``modelpress predict``'s scorer on a 1M-row table,
next to a bare onnxruntime session loop over the same batches (the physical bound) and the
same rows sent one per request through the online modelpress-onnx ModelServer.

The model is the digits MLP (sklearn ``MLPClassifier(64)`` exported with skl2onnx: outputs
label + probabilities, as the serving tests use it); the table is the digits features tiled
to ``--rows`` rows (64 float32 columns and an int64 id), generated in a temp dir, never
committed. Columns, each timed over the whole table per round, rounds interleaved so
background load hits every column alike:

* ``predict``: :func:`modelpress.jobs.scoring.predict` end to end: parquet read in batches
  (``iter_batches``), Scorer.feed/run (the online runtime's path), postprocess, and the
  output parquet written (id, class, probabilities, digest, a uuid4 prediction id per row).
* ``bare``: the same ``iter_batches`` → numpy → ``session.run`` loop, nothing written;
  ``bare_session_only`` is the time inside ``session.run`` alone (the model's compute).
* ``online``: ``--online-rows`` rows (a sample, extrapolated to rows/s) as batch-1 V1 JSON
  requests, one closed-loop client on a keep-alive connection (benchmarks/serve.py's), to a
  ``python -m modelpress.jobs.serving`` process.

    .venv/bin/python benchmarks/batch_predict.py [--rows 1000000] [--rounds 3] [--online-rows 20000]

Targets (issue 12): predict >= 0.9x the bare loop; >= 5x the online server.
Results: benchmarks/results/batch_predict.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import Connection, start_server, stop_server, v1_request  # noqa: E402 - benchmarks/serve.py

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "batch_predict.json"
TARGET_VS_BARE = 0.9
TARGET_VS_ONLINE = 5.0
FEATURES = [f"px{i}" for i in range(64)]


def build_model(root: Path) -> Path:
    """The digits MLP as an artifact dir (model/1/model.onnx)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x, y)
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    model = root / "artifact" / "model" / "1" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(onx.SerializeToString())
    return root / "artifact"


def build_table(path: Path, rows: int) -> np.ndarray:
    """The digits features tiled to ``rows`` rows, with an id column; returns the first rows (online sample)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    tiled = np.resize(x, (rows, x.shape[1]))
    columns = {"id": np.arange(rows, dtype=np.int64), **{n: tiled[:, j] for j, n in enumerate(FEATURES)}}
    pq.write_table(pa.table(columns), path, row_group_size=128 * 1024)
    return tiled


def run_predict(artifact: Path, data: Path, out: Path, batch: int) -> tuple[int, float]:
    from modelpress.jobs.scoring import predict

    start = time.perf_counter()
    result = predict(artifact, data, out, batch_rows=batch, id_columns=("id",), task="classification")
    return result.rows, time.perf_counter() - start


def run_bare(session: Any, data: Path, batch: int) -> tuple[int, float, float]:
    """(rows, seconds, seconds inside session.run) of the bare read → numpy → run loop."""
    import pyarrow.parquet as pq

    rows, in_run = 0, 0.0
    start = time.perf_counter()
    with pq.ParquetFile(data) as pf:
        for rb in pf.iter_batches(batch_size=batch, columns=FEATURES):
            x = np.column_stack([c.to_numpy() for c in rb.columns]).astype(np.float32, copy=False)
            t0 = time.perf_counter()
            session.run(None, {"input": x})
            in_run += time.perf_counter() - t0
            rows += len(x)
    return rows, time.perf_counter() - start, in_run


def run_online(conn: Connection, requests: list[bytes]) -> tuple[int, float]:
    start = time.perf_counter()
    for r in requests:
        if conn.roundtrip(r) != 200:
            raise RuntimeError("the online server answered an error")
    return len(requests), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated table")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each column once per round)")
    parser.add_argument("--online-rows", type=int, default=20_000, help="rows sent online, split over the rounds")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per run (default: predict's default)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads, all columns; 0 = ORT's")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from modelpress.jobs.scoring import DEFAULT_BATCH_ROWS, find_model_file, open_session

    batch = args.batch_size or DEFAULT_BATCH_ROWS
    console = Console(stderr=True)
    times: dict[str, list[float]] = {"predict": [], "bare": [], "bare_session_only": [], "online": []}
    with tempfile.TemporaryDirectory(prefix="modelpress-batch-bench-") as tmp:
        root = Path(tmp)
        artifact = build_model(root)
        data = root / "table.parquet"
        x = build_table(data, args.rows)
        session = open_session(find_model_file(artifact), "cpu", args.threads)
        proc, port = start_server(artifact, args.threads, root / "server.log")
        try:
            conn = Connection(port)
            per_round = max(args.online_rows // args.rounds, 1)
            requests = [v1_request({"input": x[i : i + 1]}) for i in range(per_round * args.rounds)]
            run_online(conn, requests[:200])  # warm-up, unmeasured
            run_bare(session, data, batch)
            run_predict(artifact, data, root / "out.parquet", batch)  # first-call imports and allocations
            for r in range(args.rounds):
                # Rotate the order so no column always runs first (right after the previous one's writes).
                order = ["predict", "bare", "online"]
                order = order[r % 3 :] + order[: r % 3]
                for column in order:
                    if column == "predict":
                        rows, s = run_predict(artifact, data, root / "out.parquet", batch)
                        times["predict"].append(rows / s)
                    elif column == "bare":
                        rows, s, in_run = run_bare(session, data, batch)
                        times["bare"].append(rows / s)
                        times["bare_session_only"].append(rows / in_run)
                    else:
                        rows, s = run_online(conn, requests[r * per_round : (r + 1) * per_round])
                        times["online"].append(rows / s)
                    console.print(f"round {r + 1}/{args.rounds}: {column} {times[column][-1]:,.0f} rows/s")
            conn.close()
        finally:
            stop_server(proc)

    rps = {k: round(float(np.median(v)), 1) for k, v in times.items()}
    vs_bare = round(rps["predict"] / rps["bare"], 3)
    vs_online = round(rps["predict"] / rps["online"], 1)
    table = Table(
        title=f"batch prediction, digits MLP, {args.rows:,} rows, batch {batch}, median of {args.rounds} rounds"
    )
    for col in ("column", "rows/s", "vs predict", "what it does"):
        table.add_column(col, justify="left" if col in ("column", "what it does") else "right")
    what = {
        "predict": "modelpress predict: read, score (shared path), write parquet + ids",
        "bare": "iter_batches -> numpy -> session.run, nothing written",
        "bare_session_only": "time inside session.run alone",
        "online": f"batch-1 V1 JSON to the ModelServer ({per_round * args.rounds:,} rows sampled)",
    }
    for k, v in rps.items():
        table.add_row(k, f"{v:,.0f}", f"{rps['predict'] / v:.2f}x", what[k])
    Console(width=160).print(table)
    console.print(
        f"predict / bare loop = {vs_bare:.2f}x (target >= {TARGET_VS_BARE}); "
        f"predict / online = {vs_online:.1f}x (target >= {TARGET_VS_ONLINE})"
    )
    document = {
        "benchmark": "batch_predict",
        "rows": args.rows,
        "batch_rows": batch,
        "rounds": args.rounds,
        "online_rows": per_round * args.rounds,
        "ort_threads": args.threads,
        "rows_per_s": rps,
        "rows_per_s_by_round": {k: [round(v, 1) for v in vs] for k, vs in times.items()},
        "predict_vs_bare": vs_bare,
        "predict_vs_bare_session_only": round(rps["predict"] / rps["bare_session_only"], 3),
        "predict_vs_online": vs_online,
        "target_vs_bare": TARGET_VS_BARE,
        "target_vs_online": TARGET_VS_ONLINE,
        "target_vs_bare_met": vs_bare >= TARGET_VS_BARE,
        "target_vs_online_met": vs_online >= TARGET_VS_ONLINE,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
