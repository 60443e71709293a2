"""The seams between the Job's steps: downloads leave archives packed, the compress step
unpacks them with bounds, the upload step trusts nothing the compress step left."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import free_port

from modelpress.jobs import storage
from modelpress.jobs.entrypoint import load_spec, run_phase
from modelpress.jobs.errors import JobInputError
from modelpress.jobs.pipeline import publish
from modelpress.jobs.workdir import SUMMARY_FILE
from modelpress.summary import JobSummary

from .conftest import loopback_server, make_spec, write_spec


def write_tar(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tar.addfile(info)
    return path


def test_downloads_leave_archives_packed_and_the_compress_step_unpacks(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "model.tar.gz", {"hf/config.json": b"{}", "hf/vocab.txt": b"[PAD]\n"})
    packed = storage.fetch(archive.as_uri(), tmp_path / "dl", "source.storageUri", unpack=False)
    assert packed == tmp_path / "dl" / "model.tar.gz"  # KServe would have unpacked it here
    unpacked = storage.unpack_archive(packed, "source.storageUri")
    assert (unpacked / "hf" / "vocab.txt").read_text() == "[PAD]\n"
    assert archive.is_file()  # the user's own archive is untouched (the download linked to it)
    # The single-process path does both in one call, as KServe's downloader did.
    both = storage.fetch(archive.as_uri(), tmp_path / "dl2", "source.storageUri")
    assert (both / "hf" / "config.json").read_text() == "{}"


def test_an_https_tar_gz_is_not_gunzipped_where_the_credentials_are(tmp_path: Path) -> None:
    """KServe's http downloader gunzips a .tar.gz while it writes it; the download step keeps the
    compressed bytes as received, and the bounded unpack of the compress step decodes them."""
    served = tmp_path / "served"
    served.mkdir()
    archive = write_tar(served / "model.tar.gz", {"weights.bin": bytes(4 * 2**20)})  # a few KiB gzipped
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(served)]
    server = loopback_server(command, port, "http.server")
    base = next(server)
    try:
        packed = storage.fetch(f"{base}/model.tar.gz", tmp_path / "dl", "source.storageUri", unpack=False)
    finally:
        next(server, None)
    kept = next(packed.iterdir()) if packed.is_dir() else packed
    assert kept.read_bytes() == archive.read_bytes()  # still gzip: nothing was decoded here
    assert kept.read_bytes()[:2] == b"\x1f\x8b"
    unpacked = storage.unpack_archive(packed, "source.storageUri")
    assert (unpacked / "weights.bin").stat().st_size == 4 * 2**20


def test_archive_bombs_and_links_fail_naming_the_field_and_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(storage.MAX_UNPACKED_BYTES_ENV, str(2**20))
    (tmp_path / "a").mkdir()
    big = write_tar(tmp_path / "a" / "big.tar.gz", {"weights.bin": bytes(2**20 + 1)})
    limit = r"unpacks to more than 1 MiB, the limit \(set MODELPRESS_MAX_UNPACKED_BYTES\)$"
    with pytest.raises(JobInputError, match=r"^source.storageUri: big.tar.gz " + limit):
        storage.unpack_archive(big, "source.storageUri")
    (tmp_path / "z").mkdir()
    with zipfile.ZipFile(tmp_path / "z" / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(4 * 2**20))  # compresses to a few KiB
    with pytest.raises(JobInputError, match=r"^validation.dataset.storageUri: bomb.zip unpacks to more than"):
        storage.unpack_archive(tmp_path / "z" / "bomb.zip", "validation.dataset.storageUri")
    assert not (tmp_path / "z" / "zeros.bin").exists()
    (tmp_path / "l").mkdir()
    linked = write_tar(tmp_path / "l" / "m.tar", {"ok.txt": b"x"}, link=("creds", "/var/run/secrets/token"))
    with pytest.raises(JobInputError, match=r"member 'creds' is a link or device"):
        storage.unpack_archive(linked, "source.storageUri")


def test_upload_refuses_links_and_unexpected_files(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "report.json").write_text("{}")
    secret = tmp_path / "secret"
    secret.write_text("credentials")
    (out / "report.html").symlink_to(secret)
    allowed = {"report.json": 100, "report.html": 100}
    with pytest.raises(storage.UnexpectedOutput, match="report.html is not a regular file"):
        storage.checked_outputs(out, allowed)
    (out / "report.html").unlink()
    (out / "report.html").write_text("x" * 101)
    with pytest.raises(storage.UnexpectedOutput, match="more than the 100 allowed"):
        storage.checked_outputs(out, allowed)
    (out / "report.html").write_text("<html>")
    (out / "extra.bin").write_text("x")
    with pytest.raises(storage.UnexpectedOutput, match="unexpected file extra.bin"):
        storage.checked_outputs(out, allowed)
    (out / "extra.bin").unlink()
    assert storage.checked_outputs(out, allowed) == ["report.html", "report.json"]


def test_the_three_phases_share_one_workdir(tmp_path: Path, digits_dir: Path) -> None:
    """download -> compress -> upload as the pod runs them; a tampered summary uploads nothing."""
    doc = make_spec(
        (digits_dir / "model.onnx").as_uri(), (digits_dir / "val.npz").as_uri(), (tmp_path / "out").as_uri()
    )
    spec_path = write_spec(tmp_path / "cm.yaml", doc)
    work = tmp_path / "work"
    assert run_phase("download", spec_path, work) is None
    assert json.loads((work / "inputs.json").read_text())["source"] == "source/model.onnx"
    compressed = run_phase("compress", spec_path, work)
    assert compressed is not None and compressed.outcome == "Validated"
    # A compress step that lies about the model it wrote: the upload step recomputes and refuses.
    (work / SUMMARY_FILE).write_text(
        compressed.model_copy(
            update={"artifact": compressed.artifact.model_copy(update={"sha256": "0" * 64})}
        ).model_dump_json(by_alias=True)
    )
    refused = run_phase("upload", spec_path, work)
    assert refused is not None and refused.outcome == "Failed" and "not the one the summary describes" in refused.reason
    assert not (tmp_path / "out").exists()
    (work / SUMMARY_FILE).write_text(compressed.model_dump_json(by_alias=True))
    uploaded = run_phase("upload", spec_path, work)
    assert uploaded is not None and uploaded.outcome == "Validated"
    assert (tmp_path / "out" / uploaded.recipe_hash / "model" / "1" / "model.onnx").is_file()


def test_a_failed_compress_summary_uploads_nothing(tmp_path: Path, digits_dir: Path) -> None:
    doc = make_spec(
        (digits_dir / "model.onnx").as_uri(), (digits_dir / "val.npz").as_uri(), (tmp_path / "out").as_uri()
    )
    spec = load_spec(write_spec(tmp_path / "cm.yaml", doc))
    failed = JobSummary(outcome="Failed", reason="source: broken")
    assert publish(spec, tmp_path / "work", failed) == failed
    assert not (tmp_path / "out").exists()
