"""Fixtures for the job-pipeline tests: a small real digits model on disk, specs that
point at it, and real object storage APIs on loopback.

The model is the suites' shared small digits MLP (``helpers.write_digits``: trains in a
couple of seconds on one core), written exactly as users would provide it: a
torch.export archive, an ONNX file and npz datasets. Object storage is
real too: S3 (moto's server) and GCS (gcp-storage-emulator) APIs on loopback, arranged
and inspected with their own clients (boto3, google-cloud-storage), not with fsspec,
which is what the job uploads with.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import free_port, write_digits

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable


@pytest.fixture(autouse=True)
def _quick_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short latency sampling: these tests check behaviour, not speed."""
    monkeypatch.setenv("MODELPRESS_LATENCY_BUDGET_S", "0.05")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.pt2, model.onnx, val.npz, calib.npz of a small trained digits MLP."""
    return write_digits(tmp_path_factory.mktemp("digits"), torch_export=True, calib=True)


def make_spec(
    model_uri: str,
    dataset_uri: str,
    output_uri: str,
    *,
    fmt: str = "onnx",
    steps: list[dict[str, Any]] | None = None,
    calibration_uri: str | None = None,
    search: dict[str, Any] | None = None,
    **validation: Any,
) -> dict[str, Any]:
    """A whole CompressedModel document (what users write) for the job."""
    val: dict[str, Any] = {
        "dataset": {"storageUri": dataset_uri, "format": "npz"},
        "metric": "accuracy",
        "maxAccuracyDrop": {"absolute": 0.02},
        "batchSize": 16,
    }
    if calibration_uri:
        val["calibration"] = {"storageUri": calibration_uri, "format": "npz", "samples": 50}
    val.update(validation)
    return {
        "apiVersion": "modelpress.io/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": "digits"},
        "spec": {
            "source": {"storageUri": model_uri, "format": fmt, "task": "classification"},
            "compression": {"steps": steps or [{"quantize": {"mode": "dynamic"}}], "search": search or {}},
            "validation": val,
            "output": {"storageUri": output_uri},
        },
    }


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def loopback_server(argv: list[str], port: int, what: str) -> Iterator[str]:
    """Run a storage API server process on 127.0.0.1:port until the generator closes."""
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        raise RuntimeError(f"{what} did not start")
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto_server) on a free loopback port for the whole session."""
    port = free_port()
    yield from loopback_server(
        [str(Path(PYTHON).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, "moto_server"
    )


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """A real GCS JSON API (gcp-storage-emulator, in memory) on a free loopback port."""
    port = free_port()
    argv = [
        str(Path(PYTHON).parent / "gcp-storage-emulator"),
        "start",
        "-H",
        "127.0.0.1",
        "--port",
        str(port),
        "-q",
        "-M",
    ]
    yield from loopback_server(argv, port, "gcp-storage-emulator")


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """Env pointing boto3/s3fs/kserve_storage at moto, and a boto3 client to arrange objects."""
    import boto3

    for key, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def gcs(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """Env pointing google-cloud-storage/gcsfs/kserve_storage at the emulator, and a client to arrange objects."""
    from google.cloud import storage as gcs_storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcs_storage.Client()


class S3Store:
    """Arrange and inspect objects in moto's S3 with boto3."""

    scheme = "s3"

    def __init__(self, client: Any) -> None:
        self.client = client

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def put(self, bucket: str, key: str, path: Path) -> None:
        self.client.upload_file(str(path), bucket, key)

    def keys(self, bucket: str, prefix: str) -> set[str]:
        return {o["Key"] for o in self.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()


class GcsStore:
    """Arrange and inspect objects in the GCS emulator with google-cloud-storage."""

    scheme = "gs"

    def __init__(self, client: Any) -> None:
        self.client = client

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(bucket)

    def put(self, bucket: str, key: str, path: Path) -> None:
        self.client.bucket(bucket).blob(key).upload_from_filename(str(path))

    def keys(self, bucket: str, prefix: str) -> set[str]:
        return {b.name for b in self.client.list_blobs(bucket, prefix=prefix)}

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.bucket(bucket).blob(key).download_as_bytes()


@pytest.fixture(params=["s3", "gs"])
def object_store(request: pytest.FixtureRequest) -> S3Store | GcsStore:
    """Each object store the job supports, behind one small interface."""
    if request.param == "s3":
        return S3Store(request.getfixturevalue("s3"))
    return GcsStore(request.getfixturevalue("gcs"))


def job_env(**extra: str) -> dict[str, str]:
    """Environment for a job subprocess: this one (with the test's env vars) plus extras."""
    env = dict(os.environ)
    env.update(extra)
    return env


def run_job_process(
    tmp_path: Path, *args: str, module: tuple[str, ...] = ("modelpress.jobs",), **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The Job container's command as a process from the repo root; returns it and its termination log."""
    log = tmp_path / "termination-log"
    command = [PYTHON, "-m", *module, *args, "--termination-log", str(log), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(command, env=job_env(**env), cwd=REPO, capture_output=True, text=True, timeout=240)
    return proc, log
