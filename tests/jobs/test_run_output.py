"""`modelpress run` keeps the terminal for progress and the result table: log records and
library warnings (torch's exporter notes) go to the log file it names, or here with -v."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import PYTHON, job_env, make_spec, write_spec


def run_cli(spec: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "modelpress.cli", "run", str(spec), "--workdir", str(tmp_path / "work"), *flags],
        env=job_env(COLUMNS="160"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_terminal_shows_progress_and_results_and_the_log_file_the_rest(digits_dir: Path, tmp_path: Path) -> None:
    # A torch.export source: the job exports it to ONNX, and torch's exporter warns while it does.
    doc = make_spec(
        (digits_dir / "model.pt2").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        (tmp_path / "out").as_uri(),
        fmt="pytorch-export",
    )
    spec = write_spec(tmp_path / "cm.yaml", doc)
    proc = run_cli(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Compressing + measuring" in proc.stderr and "p50 latency (ms)" in proc.stdout
    for noise in ("Warning", "WARNING", "INFO", "torchvision", "opset", "Traceback"):
        assert noise not in proc.stderr + proc.stdout, noise
    assert proc.stderr.rstrip().splitlines()[-1] == "full log: modelpress-run.log"  # relative to the cwd
    log = (tmp_path / "modelpress-run.log").read_text()
    assert "INFO modelpress.jobs.pipeline: baseline:" in log  # the compress child's records
    assert "INFO modelpress.jobs.storage: uploading" in log  # this process's records
    assert "WARNING torch.onnx" in log  # the exporter's notes, caught from torch's own handlers


def test_verbose_shows_the_log_records_here_too(digits_dir: Path, tmp_path: Path) -> None:
    doc = make_spec((digits_dir / "model.onnx").as_uri(), (digits_dir / "val.npz").as_uri(), (tmp_path / "o").as_uri())
    spec = write_spec(tmp_path / "cm.yaml", doc)
    proc = run_cli(spec, tmp_path, "-v", "--log-file", str(tmp_path / "logs" / "run.log"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "INFO modelpress.jobs.pipeline: baseline:" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "full log: logs/run.log"
    assert "INFO modelpress.jobs.pipeline: baseline:" in (tmp_path / "logs" / "run.log").read_text()
