"""Storage: KServe's downloader and fsspec's uploader against file:// and a real S3 API (moto)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx
import pytest

from modelpress.jobs import storage
from modelpress.jobs.entrypoint import run_job
from modelpress.jobs.errors import JobInputError

from .conftest import make_spec, write_spec


def test_file_uri_gives_the_named_file(digits_dir: Path, tmp_path: Path) -> None:
    local = storage.fetch((digits_dir / "model.onnx").as_uri(), tmp_path / "dl", "source.storageUri")
    assert local.name == "model.onnx"
    assert local.read_bytes() == (digits_dir / "model.onnx").read_bytes()


def test_missing_file_names_the_field_and_uri(tmp_path: Path) -> None:
    uri = (tmp_path / "nope.onnx").as_uri()
    with pytest.raises(JobInputError) as err:
        storage.fetch(uri, tmp_path / "dl", "source.storageUri")
    assert str(err.value).startswith(f"source.storageUri: cannot read {uri}: ")


def test_upload_then_download_through_s3(s3, digits_dir: Path, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="models")
    src = tmp_path / "out"
    (src / "model" / "1").mkdir(parents=True)
    (src / "model" / "1" / "model.onnx").write_bytes((digits_dir / "model.onnx").read_bytes())
    (src / "report.json").write_text("{}")
    storage.upload(src, "s3://models/runs/abc")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="runs/abc")["Contents"])
    assert keys == ["runs/abc/model/1/model.onnx", "runs/abc/report.json"]

    local = storage.fetch("s3://models/runs/abc/model/1/model.onnx", tmp_path / "dl", "source.storageUri")
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


def test_whole_job_with_s3_source_dataset_and_output(s3, digits_dir: Path, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="mlops")
    for name in ("model.onnx", "val.npz"):
        s3.upload_file(str(digits_dir / name), "mlops", f"in/{name}")
    spec = write_spec(
        tmp_path / "cm.yaml", make_spec("s3://mlops/in/model.onnx", "s3://mlops/in/val.npz", "s3://mlops/out/")
    )
    result = run_job(spec, tmp_path / "work")
    summary = json.loads(result.to_termination_message())
    assert result.exit_code == 0, summary
    assert summary["outcome"] == "Validated"
    prefix = f"out/{summary['recipeHash']}/"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="mlops", Prefix=prefix)["Contents"]}
    assert {prefix + p for p in ("model/1/model.onnx", "model/config.pbtxt", "report.json", "report.html")} <= keys
    assert summary["artifact"]["storageUri"] == f"s3://mlops/out/{summary['recipeHash']}"
    body = s3.get_object(Bucket="mlops", Key=prefix + "model/1/model.onnx")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == summary["artifact"]["sha256"]
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in onnx.load_from_string(body).graph.node)
