"""Entry point of the compression Job container: ``python -m modelpress.jobs``.

``--spec PATH`` (YAML/JSON: a whole CompressedModel or only its spec) or env
``MODELPRESS_SPEC`` (JSON). Writes the :class:`~modelpress.summary.JobSummary` to the
termination log (the operator reads it from the Pod status; the Job needs no API
credentials) and exits with :class:`~modelpress.summary.ExitCode`: 0 validated,
3 rejected, 1 failed. Users never see a traceback: input problems become the
summary's reason; unexpected errors are logged in full and summarised in one line.

``--phase`` splits the job over the containers of the Job's pod, on one shared workdir
(KServe's storage-initializer pattern, see SECURITY.md):

* ``download`` (init container, with storage credentials): fetch every input; parse nothing.
* ``compress`` (init container, no credentials): everything that parses the inputs.
  Exits 0 for Validated and Rejected alike (the upload step still uploads the report)
  and writes the summary to its termination log only when it fails.
* ``upload`` (main container, with storage credentials): check and upload what compress
  wrote; its termination log carries the final summary and its exit code the outcome.
* ``all`` (default): the three in one process, for ``modelpress run`` and tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from modelpress.api import CompressedModelSpec
from modelpress.jobs.errors import first_line
from modelpress.output import add_output_argument, dump
from modelpress.summary import DEFAULT_TERMINATION_LOG, JobSummary, Outcome

if TYPE_CHECKING:
    from modelpress.jobs.pipeline import Progress

log = logging.getLogger("modelpress.jobs")
SPEC_ENV = "MODELPRESS_SPEC"
PHASES = ("all", "download", "compress", "upload")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, help=f"CompressedModel or its spec (YAML/JSON); default: env {SPEC_ENV}")
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(DEFAULT_TERMINATION_LOG),
        help="where the JSON summary goes (the Pod's terminationMessagePath)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/work"), help="scratch space for downloads")
    parser.add_argument(
        "--phase",
        choices=PHASES,
        default="all",
        help="one step of the Job's pod (download, compress, upload) or all of them in this process (default)",
    )
    add_output_argument(parser, human=None)  # how the summary is printed; the termination log is always JSON


def _print_summary(summary: JobSummary, output: str) -> None:
    """The termination message on stdout (the pod's log), as is (json) or as YAML."""
    message = summary.to_termination_message()
    print(message if output == "json" else dump(json.loads(message), output).rstrip("\n"))


def job_command(args: argparse.Namespace) -> int:
    offline()
    configure_logging()
    summary = run_phase(args.phase, args.spec, args.workdir)
    if summary is None:  # download succeeded: nothing to report yet
        return 0
    if args.phase == "compress" and summary.outcome != Outcome.failed.value:
        # Validated or Rejected: the upload container reports (and exits with) the outcome.
        _print_summary(summary, args.output)
        return 0
    write_termination_log(args.termination_log, summary)
    _print_summary(summary, args.output)
    return int(summary.exit_code)


def run_job(spec_path: Path | None, workdir: Path, progress: Progress | None = None) -> JobSummary:
    """Parse the spec, run the whole pipeline in this process, and always come back with a summary."""
    from modelpress.jobs import pipeline

    summary = guarded(spec_path, lambda spec: pipeline.run(spec, workdir, progress).summary)
    assert summary is not None
    return summary


def run_phase(phase: str, spec_path: Path | None, workdir: Path) -> JobSummary | None:
    """One ``--phase`` of the Job; None when a download succeeded (it has no outcome to report)."""
    if phase == "all":
        return run_job(spec_path, workdir)
    from modelpress.jobs import pipeline
    from modelpress.jobs import workdir as layout

    def download(spec: CompressedModelSpec) -> None:
        pipeline.fetch_inputs(spec, workdir)
        log.info("downloaded every input to %s", workdir)

    def compress(spec: CompressedModelSpec) -> JobSummary:
        summary = pipeline.compress(spec, workdir, layout.Inputs.load(workdir)).summary
        layout.save_summary(workdir, summary)
        return summary

    def upload(spec: CompressedModelSpec) -> JobSummary:
        return pipeline.publish(spec, workdir, layout.read_summary(workdir))

    steps: dict[str, Callable[[CompressedModelSpec], JobSummary | None]] = {
        "download": download,
        "compress": compress,
        "upload": upload,
    }
    return guarded(spec_path, steps[phase])


def guarded(spec_path: Path | None, work: Callable[[CompressedModelSpec], JobSummary | None]) -> JobSummary | None:
    """Run ``work`` on the spec; input problems and crashes become a Failed summary, never a traceback."""
    from modelpress.jobs.errors import JobInputError
    from modelpress.jobs.storage import UnexpectedOutput

    try:
        spec = load_spec(spec_path)
    except JobInputError as e:
        return JobSummary(outcome=Outcome.failed, reason=str(e))
    try:
        return work(spec)
    except JobInputError as e:
        log.error("%s", e)
        return _failed(spec, str(e))
    except MemoryError:  # in the pod the kernel usually OOM-kills first; if not, say so in one line
        log.error("out of memory")
        return _failed(spec, "the compression step ran out of memory; raise spec.job.resources.limits.memory")
    except UnexpectedOutput as e:  # the upload step found the compress step's files or summary wrong
        log.error("refusing the compress step's output: %s", e)
        return _failed(spec, f"the compression step left unexpected output ({e}); nothing was uploaded")
    except Exception as e:  # a bug or the environment; the log has the traceback
        log.exception("compression job failed")
        return _failed(spec, f"internal error: {type(e).__name__}: {first_line(e)}")


def load_spec(path: Path | None) -> CompressedModelSpec:
    """The spec from a file (whole resource or bare spec) or from env MODELPRESS_SPEC,
    read by :mod:`modelpress.spec_io` (bounded size, nesting, aliases and numbers)."""
    from modelpress import spec_io
    from modelpress.jobs.errors import JobInputError

    if path is None:
        text, where = os.environ.get(SPEC_ENV), f"env {SPEC_ENV}"
        if not text:
            raise JobInputError("--spec", f"no spec given: pass --spec PATH or set {SPEC_ENV}")
    else:
        where = str(path)
        try:
            text = spec_io.read_text(path)
        except spec_io.SpecError as e:  # unreadable, too large, not UTF-8
            raise JobInputError("--spec", f"{where}: {e}") from None
    try:
        doc = spec_io.load_one(text)
    except spec_io.SpecError as e:
        if e.field:  # e.g. an integer too large: the message says the line
            raise JobInputError(e.field, f"{e.problem.message} in {where}; {e.problem.fix}") from None
        raise JobInputError("--spec", f"{where} is not YAML/JSON: {e}") from None
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


def configure_logging(log_file: Path | None = None, console: bool = True) -> None:
    """Our own steps at INFO; libraries (ORT's quantizer logs per tensor on the root
    logger, the ONNX exporter per pass) only when something is wrong.

    Records go to stderr (``console``) and/or appended to ``log_file``: ``modelpress run``
    keeps its terminal for progress bars and sends the rest to a file. ``warnings.warn``
    calls become records too, and torch's loggers, which torch gives their own stderr
    handler when it is imported, are handed to these handlers, so call this after the
    heavy imports for torch's exporter notes to follow it.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()] if console else []
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers or [logging.NullHandler()],
        force=True,
    )
    logging.getLogger("modelpress").setLevel(logging.INFO)
    logging.captureWarnings(True)
    _route_torch_loggers()


def _route_torch_loggers() -> None:
    """Drop the stderr handlers torch puts on its loggers (``import torch`` adds them and
    stops propagation) so their records reach the root logger's handlers instead."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == "torch" or name.startswith("torch.")):
            own = [h for h in logger.handlers if type(h) is logging.StreamHandler]
            for handler in own:
                logger.removeHandler(handler)
            if own:  # loggers torch keeps off on purpose (trace, disabled artifacts) have none
                logger.propagate = True


def _failed(spec: CompressedModelSpec, reason: str) -> JobSummary:
    from modelpress.api import recipe_hash

    return JobSummary(outcome=Outcome.failed, reason=reason[:1500], recipe_hash=recipe_hash(spec))
