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
"""

from __future__ import annotations

import argparse
import multiprocessing
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
from modelpress.summary import JobSummary, Outcome

if TYPE_CHECKING:
    from modelpress.api import CompressedModelSpec
    from modelpress.jobs.pipeline import Progress

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


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def run_command(args: argparse.Namespace) -> int:
    from modelpress.jobs.entrypoint import configure_logging, offline

    console = Console(stderr=True)
    offline()
    configure_logging()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelpress-"))
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

        summary = run_local(args.spec, workdir, limits, progress)
    Console().print(results_table(summary))
    console.print(f"[bold]{summary.outcome}[/bold]: {summary.reason}")
    if summary.artifact:
        console.print(f"artifact: {summary.artifact.storage_uri} (sha256 {summary.artifact.sha256[:12]}…)")
        console.print(f"report: {summary.artifact.storage_uri}/{HTML_NAME}")
    if args.serve and summary.outcome == Outcome.validated:
        from modelpress.jobs.serving import serve

        console.print(f"serving on http://127.0.0.1:{args.port}/v2/models/model/infer")
        serve(workdir / "artifact", "model", http_port=args.port)
    return int(summary.exit_code)


def run_local(spec_path: Path, workdir: Path, limits: Limits, progress: Progress) -> JobSummary:
    """Download here, compress in a limited child process, upload here: always a summary."""
    from modelpress.jobs import pipeline
    from modelpress.jobs.entrypoint import guarded

    def work(spec: CompressedModelSpec) -> JobSummary:
        pipeline.fetch_inputs(spec, workdir, progress)
        summary = compress_in_child(spec, workdir, limits, progress)
        published = pipeline.publish(spec, workdir, summary)
        progress("upload", 1, 1)
        return published

    summary = guarded(spec_path, work)
    assert summary is not None
    return summary


def compress_in_child(spec: CompressedModelSpec, workdir: Path, limits: Limits, progress: Progress) -> JobSummary:
    """``pipeline.compress`` in a spawned child under ``limits``; its summary, or why it died."""
    from modelpress.api import recipe_hash
    from modelpress.jobs.workdir import read_summary

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state shared with this one
    events = ctx.Queue()
    child = ctx.Process(
        target=_child,
        args=(spec.model_dump_json(by_alias=True), str(workdir), limits, events),
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
        reason = f"the compression step exited with code {code}; see the log above"
    return JobSummary(outcome=Outcome.failed, reason=reason, recipe_hash=recipe_hash(spec))


def _child(spec_json: str, workdir: str, limits: Limits, events: Any) -> None:
    """The compress step under ``limits``; writes its summary where the upload step reads it."""
    import logging

    from modelpress.api import CompressedModelSpec, recipe_hash
    from modelpress.jobs.errors import JobInputError, first_line
    from modelpress.jobs.workdir import Inputs, save_summary

    spec = CompressedModelSpec.model_validate_json(spec_json)
    work = Path(workdir)
    limits.apply()  # before torch and onnxruntime are imported: they count too
    try:
        from modelpress.jobs import pipeline
        from modelpress.jobs.entrypoint import configure_logging, offline

        offline()
        configure_logging()

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
