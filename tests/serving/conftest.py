"""Real parts for the serving tests: digits models (fp32 and int8 ONNX) and real
modelpress-onnx ModelServer processes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

MODEL_NAME = "digits"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll until the URL answers 200 (or fail with the process's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up:\n{out[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not up after {timeout} s")


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory) -> dict[str, Path]:
    """A small sklearn MLP on the bundled digits, exported with skl2onnx (fp32) and
    quantized to int8 with ONNX Runtime's dynamic quantization; both in the artifact
    layout ``<dir>/model/1/model.onnx``. Also ``val``: a .npz with x, y."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    root = tmp_path_factory.mktemp("digits")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x[:1500], y[:1500])
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    fp32 = root / "fp32" / "model" / "1" / "model.onnx"
    fp32.parent.mkdir(parents=True)
    fp32.write_bytes(onx.SerializeToString())
    int8 = root / "int8" / "model" / "1" / "model.onnx"
    int8.parent.mkdir(parents=True)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    np.savez(root / "val.npz", x=x[1500:], y=y[1500:].astype(np.int64))
    return {"fp32": root / "fp32", "int8": root / "int8", "val": root / "val.npz"}


class Server:
    """One modelpress-onnx process on loopback."""

    def __init__(self, model_dir: Path, env: dict[str, str] | None = None, name: str = MODEL_NAME) -> None:
        self.port = free_port()
        self.name = name
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "modelpress.jobs.serving",
                "--model_dir", str(model_dir), "--model_name", name,
                "--http_port", str(self.port), "--enable_grpc", "false",
                "--intra_op_threads", "1", "--enable_latency_logging", "false",
            ],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_http(f"{self.url}/v2/models/{name}/ready", self.proc)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(model_dir: Path, env: dict[str, str] | None = None) -> Server:
        server = Server(model_dir, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
