"""``modelpress run SPEC.yaml``: the compression job in-process, no cluster needed.

The same pipeline as the Job (``modelpress.jobs.pipeline``), with rich progress bars
while it works and a results table at the end. ``--serve`` then serves the validated
artifact with the modelpress-onnx runtime (KServe ModelServer + onnxruntime) so it can
be tried with curl right away.

As in the Job's pod, what parses the (hostile) model and data runs apart from what
holds storage credentials: this process downloads and uploads; the compress step
(unpack, load, measure, compress) runs in a child process (multiprocessing, ``spawn``)
with ``--max-memory`` and ``--max-cpu-seconds`` as resource limits (``jobs/limits.py``),
sending its progress back over a queue. A child that hits a limit or crashes fails
the run with one line; the user's shell and this process carry on.

The terminal shows progress bars and the result table only: log records, library
warnings (torch's exporter notes, onnxscript's converter) and whatever native code
prints in the child go to a log file the run names at the end (``--log-file``, by
default ``modelpress-run.log`` next to the spec), and to the terminal too with ``-v``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelpress.jobs.limits import DEFAULT_MAX_CPU_SECONDS, DEFAULT_MAX_MEMORY, Limits, out_of_memory, parse_size
from modelpress.jobs.report import HTML_NAME
from modelpress.output import add_output_argument, dump
from modelpress.summary import JobSummary, Outcome, finite

if TYPE_CHECKING:
    from modelpress.api import CompressedModelSpec
    from modelpress.jobs.pipeline import Progress as ReportProgress  # not rich's Progress (the bars)

LOG_NAME = "modelpress-run.log"
STAGES = {
    "download": "Downloading",
    "baseline": "Measuring baseline",
    "trials": "Compressing + measuring",
    "upload": "Writing artifact",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="a CompressedModel YAML (file:// or s3:// URIs)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--serve", action="store_true", help="serve the validated model afterwards")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port for --serve")
    parser.add_argument(
        "--max-memory",
        type=_size,
        default=parse_size(DEFAULT_MAX_MEMORY),
        help=f"address-space limit of the compression step, e.g. 8GiB; 0 = none (GPU runs need 0: CUDA "
        f"reserves tens of GiB) (default {DEFAULT_MAX_MEMORY})",
    )
    parser.add_argument(
        "--max-cpu-seconds",
        type=int,
        default=DEFAULT_MAX_CPU_SECONDS,
        help="CPU-time limit of the compression step in seconds; 0 = none (default)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help=f"where log records and library warnings go (default: {LOG_NAME} next to the spec, "
        "or in the workdir when that directory is not writable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show log records and library warnings here too")
    # text: the results table; json/yaml: the job's summary (as in the Job's termination message).
    add_output_argument(parser)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def run_command(args: argparse.Namespace) -> int:
    from modelpress.jobs.entrypoint import configure_logging, offline

    console = Console(stderr=True)
    offline()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelpress-"))
    log_file = args.log_file or default_log_file(args.spec, workdir)
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")  # one run per log; the compress child appends to it
    except OSError as e:
        console.print(f"modelpress run: cannot write the log file {log_file}: {e.strerror} (--log-file)")
        return 2
    from modelpress.jobs import pipeline  # noqa: F401 - imports torch, whose loggers configure_logging takes over

    configure_logging(log_file, console=args.verbose)
    limits = Limits(max_memory=args.max_memory, max_cpu_seconds=args.max_cpu_seconds)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(STAGES.get(stage, stage), total=total)
            bars.update(tasks[stage], completed=done, total=total)

        summary = run_local(args.spec, workdir, limits, progress, log_file=log_file, verbose=args.verbose)
    if args.output == "text":
        Console().print(results_table(summary))
    else:  # stdout carries only the object; progress and the lines below stay on stderr
        print(dump(finite(summary.model_dump(by_alias=True, mode="json", exclude_none=True)), args.output), end="")
    console.print(f"[bold]{summary.outcome}[/bold]: {summary.reason}")
    if summary.artifact:
        # soft_wrap: URIs and paths stay on one line, whole for copying, however narrow the terminal.
        console.print(
            f"artifact: {summary.artifact.storage_uri} (sha256 {summary.artifact.sha256[:12]}…)", soft_wrap=True
        )
        console.print(f"report: {summary.artifact.storage_uri}/{HTML_NAME}", soft_wrap=True)
    console.print(f"full log: {_shown(log_file)}", soft_wrap=True)
    if args.serve and summary.outcome == Outcome.validated:
        from modelpress.jobs.serving import serve

        console.print(f"serving on http://127.0.0.1:{args.port}/v2/models/model/infer")
        serve(workdir / "artifact", "model", http_port=args.port)
    return int(summary.exit_code)


def default_log_file(spec_path: Path, workdir: Path) -> Path:
    """``modelpress-run.log`` beside the spec, where users look for the run's outputs;
    the workdir when the spec lives in a directory this user cannot write."""
    directory = spec_path.resolve().parent
    return (directory if os.access(directory, os.W_OK) else workdir) / LOG_NAME


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (shorter to read)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_local(
    spec_path: Path,
    workdir: Path,
    limits: Limits,
    progress: ReportProgress,
    log_file: Path | None = None,
    verbose: bool = True,
) -> JobSummary:
    """Download here, compress in a limited child process, upload here: always a summary.

    With a ``log_file`` and not ``verbose``, everything the child writes (log records,
    warnings, native libraries' output) goes to that file instead of the terminal.
    """
    from modelpress.jobs import pipeline
    from modelpress.jobs.entrypoint import guarded

    def work(spec: CompressedModelSpec) -> JobSummary:
        pipeline.fetch_inputs(spec, workdir, progress)
        summary = compress_in_child(spec, workdir, limits, progress, log_file, verbose)
        published = pipeline.publish(spec, workdir, summary)
        progress("upload", 1, 1)
        return published

    summary = guarded(spec_path, work)
    assert summary is not None
    return summary


def compress_in_child(
    spec: CompressedModelSpec,
    workdir: Path,
    limits: Limits,
    progress: ReportProgress,
    log_file: Path | None = None,
    verbose: bool = True,
) -> JobSummary:
    """``pipeline.compress`` in a spawned child under ``limits``; its summary, or why it died."""
    from modelpress.api import recipe_hash
    from modelpress.jobs.workdir import read_summary

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state shared with this one
    events = ctx.Queue()
    child = ctx.Process(
        target=_child,
        args=(spec.model_dump_json(by_alias=True), str(workdir), limits, events, log_file, verbose),
        name="modelpress-compress",
    )
    child.start()
    while child.is_alive() or not events.empty():
        try:
            _, task, done, total = events.get(timeout=0.2)
        except queue.Empty:
            continue
        progress(task, done, total)
    child.join()
    if child.exitcode == 0:
        return read_summary(workdir)
    code = child.exitcode or 0
    if limits.max_cpu_seconds and code in (-signal.SIGXCPU, -signal.SIGKILL):
        reason = limits.cpu_message()
    elif code < 0:
        name = signal.Signals(-code).name
        hint = "; if it ran out of memory, raise --max-memory" if limits.max_memory else ""
        reason = f"the compression step was killed by {name}{hint}"
    else:
        reason = (
            f"the compression step exited with code {code}; see {_shown(log_file) if log_file else 'the log above'}"
        )
    return JobSummary(outcome=Outcome.failed, reason=reason, recipe_hash=recipe_hash(spec))


def _child(spec_json: str, workdir: str, limits: Limits, events: Any, log_file: Path | None, verbose: bool) -> None:
    """The compress step under ``limits``; writes its summary where the upload step reads it."""
    import logging

    from modelpress.api import CompressedModelSpec, recipe_hash
    from modelpress.jobs.errors import JobInputError, first_line
    from modelpress.jobs.workdir import Inputs, save_summary

    spec = CompressedModelSpec.model_validate_json(spec_json)
    work = Path(workdir)
    limits.apply()  # before torch and onnxruntime are imported: they count too
    if log_file is not None and not verbose:
        _redirect_output(log_file)
    try:
        from modelpress.jobs import pipeline
        from modelpress.jobs.entrypoint import configure_logging, offline

        offline()
        configure_logging(log_file, console=verbose or log_file is None)

        def progress(task: str, done: int, total: int) -> None:
            events.put(("progress", task, done, total))

        summary = pipeline.compress(spec, work, Inputs.load(work), progress).summary
    except BaseException as e:  # the child's last word, in one line, whatever happened
        if limits.max_memory and out_of_memory(e):
            reason = limits.memory_message()
        elif isinstance(e, JobInputError):
            reason = str(e)
        else:
            logging.getLogger("modelpress.jobs").exception("compression step failed")
            reason = f"internal error: {type(e).__name__}: {first_line(e)}"
        summary = JobSummary(outcome=Outcome.failed, reason=reason[:1500], recipe_hash=recipe_hash(spec))
    save_summary(work, summary)


def _redirect_output(log_file: Path) -> None:
    """Point this process's stdout and stderr (the file descriptors) at ``log_file``:
    onnxruntime's C++ logger and libraries' prints bypass Python's logging."""
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for target in (1, 2):
            os.dup2(fd, target)
    finally:
        os.close(fd)


def results_table(summary: JobSummary) -> Table:
    """Baseline vs compressed, one row per measurement."""
    r = summary.results
    table = Table(title=f"ModelPress {summary.outcome}" + (f" ({r.trials} trials)" if r and r.trials else ""))
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("compressed", justify="right")
    if r is None or r.baseline is None:
        return table
    b, c = r.baseline, r.compressed
    rows = [
        (r.metric or "score", b.score, c.score if c else None, "{:.4f}"),
        ("p50 latency (ms)", b.latency_p50_ms, c.latency_p50_ms if c else None, "{:.3f}"),
        ("p95 latency (ms)", b.latency_p95_ms, c.latency_p95_ms if c else None, "{:.3f}"),
        ("throughput (samples/s)", b.throughput, c.throughput if c else None, "{:.0f}"),
        ("size (MB)", (b.size_bytes or 0) / 1e6, (c.size_bytes or 0) / 1e6 if c else None, "{:.3f}"),
        ("parameters", b.parameters, c.parameters if c else None, "{:,}"),
    ]
    for name, base, comp, fmt in rows:
        table.add_row(name, "–" if base is None else fmt.format(base), "–" if comp is None else fmt.format(comp))
    if r.speedup is not None:
        table.add_row("speedup", "", f"{r.speedup:.2f}x")
    for failed in r.failed_thresholds:
        table.add_row("[red]failed[/red]", "", failed)
    return table
