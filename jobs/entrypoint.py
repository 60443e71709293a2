"""Entry point of the compression Job container: ``python -m modelpress.jobs``.

``--spec PATH`` (YAML/JSON: a whole CompressedModel or only its spec) or env
``MODELPRESS_SPEC`` (JSON). Writes the :class:`~modelpress.summary.JobSummary` to the
termination log (the operator reads it from the Pod status; the Job needs no API
credentials) and exits with :class:`~modelpress.summary.ExitCode`: 0 validated,
3 rejected, 1 failed. Users never see a traceback: input problems become the
summary's reason; unexpected errors are logged in full and summarised in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from modelpress.api import CompressedModelSpec
from modelpress.jobs.errors import first_line
from modelpress.summary import DEFAULT_TERMINATION_LOG, JobSummary, Outcome

if TYPE_CHECKING:
    from modelpress.jobs.pipeline import Progress

log = logging.getLogger("modelpress.jobs")
SPEC_ENV = "MODELPRESS_SPEC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, help=f"CompressedModel or its spec (YAML/JSON); default: env {SPEC_ENV}")
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(DEFAULT_TERMINATION_LOG),
        help="where the JSON summary goes (the Pod's terminationMessagePath)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/work"), help="scratch space for downloads")


def job_command(args: argparse.Namespace) -> int:
    offline()
    configure_logging()
    summary = run_job(args.spec, args.workdir)
    write_termination_log(args.termination_log, summary)
    print(summary.to_termination_message())
    return int(summary.exit_code)


def run_job(spec_path: Path | None, workdir: Path, progress: Progress | None = None) -> JobSummary:
    """Parse the spec, run the pipeline, and always come back with a summary."""
    from modelpress.jobs.errors import JobInputError

    try:
        spec = load_spec(spec_path)
    except JobInputError as e:
        return JobSummary(outcome=Outcome.failed, reason=str(e))
    try:
        from modelpress.jobs import pipeline

        return pipeline.run(spec, workdir, progress).summary
    except JobInputError as e:
        log.error("%s", e)
        return _failed(spec, str(e))
    except Exception as e:  # a bug or the environment; the log has the traceback
        log.exception("compression job failed")
        return _failed(spec, f"internal error: {type(e).__name__}: {first_line(e)}")


def load_spec(path: Path | None) -> CompressedModelSpec:
    """The spec from a file (whole resource or bare spec) or from env MODELPRESS_SPEC."""
    import yaml

    from modelpress.jobs.errors import JobInputError

    if path is None:
        text, where = os.environ.get(SPEC_ENV), f"env {SPEC_ENV}"
        if not text:
            raise JobInputError("--spec", f"no spec given: pass --spec PATH or set {SPEC_ENV}")
    else:
        where = str(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise JobInputError("--spec", f"cannot read {path}: {e.strerror}") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise JobInputError("--spec", f"{where} is not YAML/JSON: {first_line(e)}") from e
    if not isinstance(doc, dict):
        raise JobInputError("--spec", f"{where} must hold a CompressedModel or its spec (a mapping)")
    body = doc["spec"] if "kind" in doc and isinstance(doc.get("spec"), dict) else doc
    try:
        return CompressedModelSpec.model_validate(body)
    except ValidationError as e:
        problems = "; ".join(f"{_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors())
        raise JobInputError("spec", f"invalid: {problems}") from e


def _path(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a spec path, e.g. spec.compression.steps[0].prune.sparsity."""
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def write_termination_log(path: Path, summary: JobSummary) -> None:
    """Best effort: a missing /dev/termination-log (local runs) is not an error."""
    try:
        path.write_text(summary.to_termination_message())
    except OSError as e:
        log.warning("cannot write termination log %s: %s", path, e.strerror)


def offline() -> None:
    """Never reach a model hub at run time: models and data come from storageUris only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def configure_logging() -> None:
    """Our own steps at INFO; libraries (ORT's quantizer logs per tensor on the root
    logger, the ONNX exporter per pass) only when something is wrong."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("modelpress").setLevel(logging.INFO)


def _failed(spec: CompressedModelSpec, reason: str) -> JobSummary:
    from modelpress.api import recipe_hash

    return JobSummary(outcome=Outcome.failed, reason=reason[:1500], recipe_hash=recipe_hash(spec))
