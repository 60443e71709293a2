"""The Job's entry point and ``modelpress run``: spec input, termination log, exit codes."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelpress.jobs.entrypoint import load_spec, run_job
from modelpress.jobs.errors import JobInputError
from modelpress.summary import TERMINATION_MESSAGE_LIMIT

from .conftest import PYTHON, REPO, free_port, job_env, make_spec, run_job_process, write_spec


def digits_doc(digits_dir: Path, out: Path, **kw) -> dict:
    return make_spec(
        (digits_dir / "model.onnx").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        out.as_uri(),
        calibration_uri=(digits_dir / "calib.npz").as_uri(),
        **kw,
    )


def test_spec_from_env_validated_exit_0(tmp_path: Path, digits_dir: Path) -> None:
    spec_only = digits_doc(digits_dir, tmp_path / "out")["spec"]
    proc, log = run_job_process(tmp_path, MODELPRESS_SPEC=json.dumps(spec_only))
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = log.read_text()
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    summary = json.loads(message)
    assert summary["outcome"] == "Validated" and summary["version"] == 1
    assert summary["results"]["passed"] is True and summary["results"]["trials"] == 1
    assert (tmp_path / "out" / summary["recipeHash"] / "model" / "1" / "model.onnx").is_file()
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary  # the summary is also the last log line
    assert "downloading" in proc.stderr and "Validated" in proc.stderr  # the log says what it does


def test_modelpress_job_rejected_exit_3(tmp_path: Path, digits_dir: Path) -> None:
    spec = write_spec(tmp_path / "cm.yaml", digits_doc(digits_dir, tmp_path / "out", maxLatencyMs=1e-6))
    proc, log = run_job_process(tmp_path, "job", "--spec", str(spec), module=("modelpress.cli",))
    assert proc.returncode == 3, proc.stderr[-3000:]
    summary = json.loads(log.read_text())
    assert summary["outcome"] == "Rejected"
    assert summary["results"]["failedThresholds"][0].startswith("maxLatencyMs: p95 ")
    assert "artifact" not in summary


def test_modelpress_run_prints_a_table_and_serves(tmp_path: Path, digits_dir: Path) -> None:
    """`modelpress run --serve`: results table, then the artifact answers KServe V1 predictions."""
    spec = write_spec(tmp_path / "cm.yaml", digits_doc(digits_dir, tmp_path / "out"))
    port = free_port()
    out, err = (tmp_path / "stdout").open("w"), (tmp_path / "stderr").open("w")
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "modelpress.cli",
            "run",
            str(spec),
            "--workdir",
            str(tmp_path / "work"),
            "--serve",
            "--port",
            str(port),
        ],
        env=job_env(COLUMNS="160", PYTHONUNBUFFERED="1"),
        cwd=REPO,
        stdout=out,
        stderr=err,
    )
    try:
        predictions = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with np.load(digits_dir / "val.npz") as val:
                    x, y = val["x"][:20], val["y"][:20]
                body = json.dumps({"instances": x.tolist()}).encode()
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/models/model:predict", body, {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    predictions = np.array(json.loads(response.read())["predictions"])
                break
            except OSError:
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert predictions is not None, stderr[-3000:]
    assert predictions.shape == (20, 10) and np.mean(predictions.argmax(1) == y) >= 0.8
    for row in ("accuracy", "p50 latency (ms)", "size (MB)", "parameters", "speedup"):
        assert row in stdout
    assert "Validated" in stdout + stderr and "artifact: file://" in stderr


def test_load_spec_accepts_a_whole_resource_or_only_its_spec(tmp_path: Path, digits_dir: Path) -> None:
    doc = digits_doc(digits_dir, tmp_path / "out")
    whole = load_spec(write_spec(tmp_path / "whole.yaml", doc))
    bare = load_spec(write_spec(tmp_path / "bare.yaml", doc["spec"]))
    (tmp_path / "spec.json").write_text(json.dumps(doc["spec"]))
    assert whole == bare == load_spec(tmp_path / "spec.json")


def test_invalid_spec_fails_naming_the_field(tmp_path: Path, digits_dir: Path) -> None:
    doc = digits_doc(digits_dir, tmp_path / "out", steps=[{"prune": {"sparsity": 2.0}}])
    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    assert summary.outcome == "Failed" and summary.exit_code == 1
    assert "spec.compression.steps[0].prune.sparsity: Input should be less than or equal to 0.95" in summary.reason
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("source: [unclosed", "is not YAML/JSON"),
        ("- just\n- a list\n", "must hold a CompressedModel or its spec"),
    ],
)
def test_unreadable_spec_files(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "cm.yaml").write_text(text)
    with pytest.raises(JobInputError, match=fragment):
        load_spec(tmp_path / "cm.yaml")


def test_no_spec_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELPRESS_SPEC", raising=False)
    with pytest.raises(JobInputError, match="pass --spec PATH or set MODELPRESS_SPEC"):
        load_spec(None)


def test_same_recipe_lands_in_the_same_place(tmp_path: Path, digits_dir: Path) -> None:
    """Content addressing: changing only where the Job runs keeps the artifact path."""
    doc = digits_doc(digits_dir, tmp_path / "out")
    first = run_job(write_spec(tmp_path / "a.yaml", doc), tmp_path / "w1")
    doc["spec"]["job"] = {"gpu": 0, "backoffLimit": 2}
    second = run_job(write_spec(tmp_path / "b.yaml", yaml.safe_load(yaml.safe_dump(doc))), tmp_path / "w2")
    assert first.recipe_hash == second.recipe_hash
    assert first.artifact.storage_uri == second.artifact.storage_uri


def test_a_reused_workdir_never_serves_old_files(tmp_path: Path, digits_dir: Path) -> None:
    """The second run has a broken model under the same file name: it must see it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes((digits_dir / "model.onnx").read_bytes())
    doc = make_spec((src / "model.onnx").as_uri(), (digits_dir / "val.npz").as_uri(), (tmp_path / "out").as_uri())
    spec = write_spec(tmp_path / "cm.yaml", doc)
    assert run_job(spec, tmp_path / "work").outcome == "Validated"
    (src / "model.onnx").write_bytes(b"broken")
    second = run_job(spec, tmp_path / "work")
    assert second.outcome == "Failed" and "not a valid ONNX model" in second.reason
