"""Real parts for the serving tests: digits models (fp32 and int8 ONNX) and real
modelpress-onnx ModelServer processes on loopback."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, wait_http

MODEL_NAME = "digits"


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory) -> dict[str, Path]:
    """A small sklearn MLP on the bundled digits, exported with skl2onnx (fp32) and
    quantized to int8 with ONNX Runtime's dynamic quantization; both in the artifact
    layout ``<dir>/model/1/model.onnx``. Also ``val``: a .npz with x, y; and ``damaged``: the
    same MLP statically quantized to int8 with a calibration of zeros only (int8 without the
    calibration it needs: its top-1 agrees with fp32 on ~60% of ``val``, a shadow must stop it)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
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

    class Zeros(CalibrationDataReader):
        """One all-zero batch: activation ranges calibrated on nothing like the real inputs."""

        def __init__(self) -> None:
            self.batches = iter([{"input": np.zeros((1, 64), np.float32)}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    damaged = root / "damaged" / "model" / "1" / "model.onnx"
    damaged.parent.mkdir(parents=True)
    quantize_static(str(fp32), str(damaged), Zeros(), quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8)
    np.savez(root / "val.npz", x=x[1500:], y=y[1500:].astype(np.int64))
    return {
        "fp32": root / "fp32", "int8": root / "int8", "damaged": root / "damaged", "val": root / "val.npz"
    }  # fmt: skip


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate, then kill if it does not exit within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """One modelpress-onnx process on loopback (``grpc``: also its Open Inference gRPC port;
    ``args``: more command-line flags, e.g. the --shadow_* ones)."""

    def __init__(
        self,
        model_dir: Path,
        env: dict[str, str] | None = None,
        name: str = MODEL_NAME,
        grpc: bool = False,
        args: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.name = name
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: an unread pipe fills up with access logs and blocks the server.
        self.log = Path(tempfile.mkstemp(prefix=f"modelpress-onnx-{self.port}-", suffix=".log")[1])
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "modelpress.jobs.serving",
                "--model_dir", str(model_dir), "--model_name", name,
                "--http_port", str(self.port), "--intra_op_threads", "1", "--enable_latency_logging", "false",
                *(["--enable_grpc", "true", "--grpc_port", str(self.grpc_port)] if grpc else ["--enable_grpc", "false"]),
                *args,
            ],
            env={**os.environ, **(env or {})},
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_http(f"{self.url}/v2/models/{name}/ready", proc=self.proc, log=self.log)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.unlink(missing_ok=True)


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(
        model_dir: Path, env: dict[str, str] | None = None, grpc: bool = False, args: Sequence[str] = ()
    ) -> Server:
        server = Server(model_dir, env, grpc=grpc, args=args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Prometheus:
    """A real Prometheus (Debian package) scraping the given servers every second.

    ``labels``: per target, the labels Prometheus attaches to its series (what
    kubernetes_sd relabelling gives a pod in a cluster, e.g. ``namespace``). The targets
    come from a file (file_sd), so :meth:`set_targets` can change them mid-test, as pods
    come and go in a cluster.
    """

    def __init__(self, workdir: Path, targets: list[str], labels: list[dict[str, str]] | None = None) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: `make test` installs it (Debian package prometheus)"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = workdir / "targets.json"
        self.set_targets(targets, labels)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: modelpress\n"
            f"    file_sd_configs: [{{files: [{json.dumps(str(self.targets_file))}], refresh_interval: 1s}}]\n"
        )
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_http(f"{self.url}/-/ready", proc=self.proc, log=self.log)
            if targets:
                self.wait_until(f"count(up == 1) == {len(targets)}")
        except Exception:
            self.stop()
            raise

    def set_targets(self, targets: list[str], labels: list[dict[str, str]] | None = None) -> None:
        """Scrape these targets from now on (``labels``: per target, as in the constructor)."""
        groups = (
            [{"targets": [t], "labels": lab} for t, lab in zip(targets, labels, strict=True)]
            if labels
            else [{"targets": targets}]
        )
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_file)  # atomic: Prometheus never reads half a file

    def wait_until(self, promql: str, timeout: float = 30.0) -> None:
        """Until the query returns a non-empty result."""
        deadline = time.monotonic() + timeout
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=5) as r:
                if json.loads(r.read())["data"]["result"]:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"Prometheus: {promql} still empty after {timeout} s")

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def start_prometheus(tmp_path) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def start(servers: list[Server], namespaces: list[str] | None = None) -> Prometheus:
        """``namespaces``: one per server, attached as its series' ``namespace`` label."""
        labels = [{"namespace": ns} for ns in namespaces] if namespaces else None
        prom = Prometheus(tmp_path, [s.url.removeprefix("http://") for s in servers], labels)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()


def send_load(
    stable: Server, canary: Server | None, canary_percent: int, requests: int, x: np.ndarray
) -> dict[str, int]:
    """Closed-loop V1 load split by the canary percent (deterministic interleaving, as a
    weighted router would on average); returns status-code counts per side."""
    conns = {"stable": http.client.HTTPConnection("127.0.0.1", stable.port, timeout=10)}
    if canary is not None:
        conns["canary"] = http.client.HTTPConnection("127.0.0.1", canary.port, timeout=10)
    counts: dict[str, int] = {}
    path = f"/v1/models/{MODEL_NAME}:predict"
    for i in range(requests):
        to_canary = canary is not None and (i + 1) * canary_percent // 100 > i * canary_percent // 100
        side = "canary" if to_canary else "stable"
        body = json.dumps({"instances": x[i % len(x) : i % len(x) + 1].tolist()})
        conns[side].request("POST", path, body, {"Content-Type": "application/json"})
        response = conns[side].getresponse()
        response.read()
        key = f"{side}:{response.status}"
        counts[key] = counts.get(key, 0) + 1
    for conn in conns.values():
        conn.close()
    return counts


@pytest.fixture
def load() -> Callable[..., dict[str, int]]:
    """The load generator (a fixture because test modules cannot import conftest)."""
    return send_load


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture()
def prometheus(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, float | None | Exception]], None]:
    """Prometheus as a table of answers: ``install({promql: value | None | exception})`` makes
    the operator's analysis get exactly these, so a verdict can be checked query by query.
    An unexpected query is a KeyError: the test fails."""
    from modelpress.operator import analysis

    def install(answers: dict[str, float | None | Exception]) -> None:
        def query(url: str, promql: str, timeout: float = 5.0) -> float | None:
            answer = answers[promql]
            if isinstance(answer, Exception):
                raise answer
            return answer

        monkeypatch.setattr(analysis, "query", query)

    return install
