"""Storage: KServe's downloader and fsspec's uploader against file://, pvc:// and real S3 (moto) and GCS (emulator) APIs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import onnx
import pytest
from helpers import free_port

from modelpress.jobs import storage
from modelpress.jobs.entrypoint import run_job
from modelpress.jobs.errors import JobInputError

from .conftest import loopback_server, make_spec, write_spec


def test_file_uri_gives_the_named_file(digits_dir: Path, tmp_path: Path) -> None:
    local = storage.fetch((digits_dir / "model.onnx").as_uri(), tmp_path / "dl", "source.storageUri")
    assert local.name == "model.onnx"
    assert local.read_bytes() == (digits_dir / "model.onnx").read_bytes()


def test_missing_file_names_the_field_and_uri(tmp_path: Path) -> None:
    uri = (tmp_path / "nope.onnx").as_uri()
    with pytest.raises(JobInputError) as err:
        storage.fetch(uri, tmp_path / "dl", "source.storageUri")
    assert str(err.value).startswith(f"source.storageUri: cannot read {uri}: ")


def test_upload_then_download_through_object_store(object_store, digits_dir: Path, tmp_path: Path) -> None:
    object_store.create_bucket("models")
    src = tmp_path / "out"
    (src / "model" / "1").mkdir(parents=True)
    (src / "model" / "1" / "model.onnx").write_bytes((digits_dir / "model.onnx").read_bytes())
    (src / "report.json").write_text("{}")
    storage.upload(src, f"{object_store.scheme}://models/runs/abc")
    assert object_store.keys("models", "runs/abc") == {"runs/abc/model/1/model.onnx", "runs/abc/report.json"}

    uri = f"{object_store.scheme}://models/runs/abc/model/1/model.onnx"
    local = storage.fetch(uri, tmp_path / "dl", "source.storageUri")
    assert local.read_bytes() == (digits_dir / "model.onnx").read_bytes()
    onnx.checker.check_model(onnx.load(str(local)))


def test_s3_prefix_downloads_the_directory(s3, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="dirs")
    s3.put_object(Bucket="dirs", Key="hf/config.json", Body=b'{"a": 1}')
    s3.put_object(Bucket="dirs", Key="hf/tok/vocab.txt", Body=b"[PAD]\n")
    local = storage.fetch("s3://dirs/hf", tmp_path / "dl", "source.storageUri")
    assert json.loads((local / "config.json").read_text()) == {"a": 1}
    assert (local / "tok" / "vocab.txt").read_text() == "[PAD]\n"


def test_missing_s3_object_and_bucket_are_readable_errors(s3, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="empty")
    with pytest.raises(JobInputError, match=r"^validation.dataset.storageUri: cannot read s3://empty/val.npz: "):
        storage.fetch("s3://empty/val.npz", tmp_path / "a", "validation.dataset.storageUri")
    with pytest.raises(JobInputError, match=r"^source.storageUri: cannot read s3://no-such-bucket/m.onnx: "):
        storage.fetch("s3://no-such-bucket/m.onnx", tmp_path / "b", "source.storageUri")


def test_kserve_style_s3_endpoint_variables(
    s3, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """KServe's S3 secret gives a bare host in S3_ENDPOINT plus S3_USE_HTTPS=0."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("S3_ENDPOINT", moto_endpoint.removeprefix("http://"))
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    s3.create_bucket(Bucket="kserve")
    s3.put_object(Bucket="kserve", Key="m.bin", Body=b"x" * 10)
    assert storage.fetch("s3://kserve/m.bin", tmp_path / "dl", "source.storageUri").read_bytes() == b"x" * 10
    assert os.environ["AWS_ENDPOINT_URL"] == moto_endpoint


def test_whole_job_with_object_store_source_dataset_and_output(object_store, digits_dir: Path, tmp_path: Path) -> None:
    scheme = object_store.scheme
    object_store.create_bucket("mlops")
    for name in ("model.onnx", "val.npz"):
        object_store.put("mlops", f"in/{name}", digits_dir / name)
    spec = write_spec(
        tmp_path / "cm.yaml",
        make_spec(f"{scheme}://mlops/in/model.onnx", f"{scheme}://mlops/in/val.npz", f"{scheme}://mlops/out/"),
    )
    result = run_job(spec, tmp_path / "work")
    summary = json.loads(result.to_termination_message())
    assert result.exit_code == 0, summary
    assert summary["outcome"] == "Validated"
    prefix = f"out/{summary['recipeHash']}/"
    keys = object_store.keys("mlops", prefix)
    assert {prefix + p for p in ("model/1/model.onnx", "model/config.pbtxt", "report.json", "report.html")} <= keys
    assert summary["artifact"]["storageUri"] == f"{scheme}://mlops/out/{summary['recipeHash']}"
    body = object_store.get("mlops", prefix + "model/1/model.onnx")
    assert hashlib.sha256(body).hexdigest() == summary["artifact"]["sha256"]
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in onnx.load_from_string(body).graph.node)
    # What KServe's storage initializer would fetch for the InferenceService.
    served = storage.fetch(summary["artifact"]["storageUri"], tmp_path / "served", "artifact")
    assert (served / "model" / "1" / "model.onnx").read_bytes() == body


@pytest.fixture
def pvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory standing in for the Job pod's PVC mount root (one subdirectory per claim)."""
    root = tmp_path / "mnt-pvc"
    root.mkdir()
    monkeypatch.setenv(storage.PVC_ROOT_ENV, str(root))
    return root


def test_pvc_uri_reads_the_mounted_claim(pvc_root: Path, digits_dir: Path, tmp_path: Path) -> None:
    (pvc_root / "models" / "digits").mkdir(parents=True)
    (pvc_root / "models" / "digits" / "model.onnx").write_bytes((digits_dir / "model.onnx").read_bytes())
    local = storage.fetch("pvc://models/digits/model.onnx", tmp_path / "dl", "source.storageUri")
    assert local.name == "model.onnx" and local.read_bytes() == (digits_dir / "model.onnx").read_bytes()
    directory = storage.fetch("pvc://models/digits", tmp_path / "dir", "source.storageUri")
    assert sorted(p.name for p in directory.iterdir()) == ["model.onnx"]


def test_pvc_errors_name_the_field_the_claim_and_the_fix(pvc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(JobInputError) as err:
        storage.fetch("pvc://absent/m.onnx", tmp_path / "dl", "source.storageUri")
    message = str(err.value)
    assert message.startswith("source.storageUri: pvc://absent/m.onnx: claim 'absent' is not mounted at ")
    assert str(pvc_root / "absent") in message and storage.PVC_ROOT_ENV in message
    (pvc_root / "data").mkdir()
    with pytest.raises(JobInputError, match=r"^validation.dataset.storageUri: cannot read pvc://data/val.npz: "):
        storage.fetch("pvc://data/val.npz", tmp_path / "dl2", "validation.dataset.storageUri")
    (tmp_path / "secret.txt").write_text("not in the claim")
    with pytest.raises(JobInputError, match=r"leaves claim 'data'"):
        storage.fetch("pvc://data/../../secret.txt", tmp_path / "dl3", "source.storageUri")
    with pytest.raises(JobInputError, match=r"^output.storageUri: pvc://gone/out: claim 'gone' is not mounted"):
        storage.upload(tmp_path, "pvc://gone/out")


def test_whole_job_with_pvc_source_dataset_and_output(pvc_root: Path, digits_dir: Path, tmp_path: Path) -> None:
    """Inputs on one claim, output on another, as the operator mounts them (see job_builder)."""
    (pvc_root / "inputs" / "digits").mkdir(parents=True)
    for name in ("model.onnx", "val.npz", "calib.npz"):
        (pvc_root / "inputs" / "digits" / name).write_bytes((digits_dir / name).read_bytes())
    (pvc_root / "results").mkdir()
    doc = make_spec(
        "pvc://inputs/digits/model.onnx",
        "pvc://inputs/digits/val.npz",
        "pvc://results/runs",
        calibration_uri="pvc://inputs/digits/calib.npz",
        steps=[{"quantize": {"mode": "static"}}],
    )
    result = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    summary = json.loads(result.to_termination_message())
    assert result.exit_code == 0, summary
    out = pvc_root / "results" / "runs" / summary["recipeHash"]
    assert summary["artifact"]["storageUri"] == f"pvc://results/runs/{summary['recipeHash']}"
    body = (out / "model" / "1" / "model.onnx").read_bytes()
    assert hashlib.sha256(body).hexdigest() == summary["artifact"]["sha256"]
    assert (out / "report.json").is_file() and (out / "report.html").is_file()
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(body).graph.node)
    assert sorted(p.name for p in (pvc_root / "inputs" / "digits").iterdir()) == ["calib.npz", "model.onnx", "val.npz"]


def test_whole_job_with_model_and_data_over_http(digits_dir: Path, tmp_path: Path) -> None:
    """https:// and http:// sources go through KServe's downloader like every other scheme
    (a plain HTTP file server on loopback here; TLS is the same code path in kserve_storage)."""
    port = free_port()
    server = loopback_server(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(digits_dir)],
        port,
        "http.server",
    )
    base = next(server)
    try:
        doc = make_spec(f"{base}/model.onnx", f"{base}/val.npz", (tmp_path / "out").as_uri())
        result = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    finally:
        next(server, None)  # runs the generator's teardown: the server process stops
    summary = json.loads(result.to_termination_message())
    assert result.exit_code == 0, summary
    assert summary["outcome"] == "Validated"
    body = (tmp_path / "out" / summary["recipeHash"] / "model" / "1" / "model.onnx").read_bytes()
    assert hashlib.sha256(body).hexdigest() == summary["artifact"]["sha256"]
