"""The workdir the compression job's steps share (one scratch volume in the Job's pod).

::

    <workdir>/
        source/ dataset/ calibration/ students/<i>/   downloads (archives still packed)
        inputs.json     written by the download step: where each input landed
        artifact/       written by the compress step: model/ (when validated), report.json/.html
        summary.json    written by the compress step: its outcome, read by the upload step

The download and upload steps hold storage credentials; the compress step does not
and parses the hostile inputs, so what it leaves is read back as untrusted input.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from modelpress.jobs.errors import first_line
from modelpress.jobs.storage import UnexpectedOutput
from modelpress.summary import JobSummary

INPUT_DIRS = ("source", "dataset", "calibration", "students")
INPUTS_FILE = "inputs.json"  # written by fetch_inputs: where each input landed
ARTIFACT_DIR = "artifact"  # written by compress: model (when validated) + report
SUMMARY_FILE = "summary.json"  # written by compress: its outcome, read by publish
SUMMARY_READ_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Inputs:
    """Where ``pipeline.fetch_inputs`` put each input, relative to the workdir.

    ``students``: distillation students by storageUri (fetched up front, so the compress
    step never needs storage credentials).
    """

    source: str
    dataset: str
    calibration: str | None = None
    students: dict[str, str] = field(default_factory=dict)

    def path(self, workdir: Path, rel: str) -> Path:
        """``rel`` under ``workdir``, refusing a path that leaves it.

        Checked by name, not resolved: a file:// input is a symlink to the user's file.
        """
        parts = PurePosixPath(rel)
        if parts.is_absolute() or ".." in parts.parts:
            raise ValueError(f"{INPUTS_FILE}: {rel} is outside the workdir")
        return workdir / parts

    def save(self, workdir: Path) -> None:
        (workdir / INPUTS_FILE).write_text(json.dumps(asdict(self), sort_keys=True))

    @classmethod
    def load(cls, workdir: Path) -> Inputs:
        try:
            return cls(**json.loads((workdir / INPUTS_FILE).read_text()))
        except FileNotFoundError as e:
            raise RuntimeError(f"{workdir / INPUTS_FILE} is missing: the download step did not run") from e


def save_summary(workdir: Path, summary: JobSummary) -> None:
    """The compress step's outcome, for :func:`read_summary` in the upload step."""
    (workdir / SUMMARY_FILE).write_text(summary.model_dump_json(by_alias=True, exclude_none=True))


def read_summary(workdir: Path) -> JobSummary:
    """The compress step's outcome, read as untrusted input: bounded, validated, no symlink."""
    path = workdir / SUMMARY_FILE
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError("missing or not a regular file")
        with path.open("rb") as f:
            data = f.read(SUMMARY_READ_LIMIT + 1)
        if len(data) > SUMMARY_READ_LIMIT:
            raise ValueError(f"larger than {SUMMARY_READ_LIMIT} bytes")
        return JobSummary.model_validate_json(data)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise UnexpectedOutput(f"{SUMMARY_FILE}: {first_line(e)}") from e
