"""``modelpress run SPEC.yaml``: the compression job in-process, no cluster needed.

The same pipeline as the Job (``modelpress.jobs.pipeline``), with rich progress bars
while it works and a results table at the end. ``--serve`` then serves the validated
artifact with the modelpress-onnx runtime (KServe ModelServer + onnxruntime) so it can
be tried with curl right away.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelpress.jobs.report import HTML_NAME
from modelpress.summary import JobSummary, Outcome

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


def run_command(args: argparse.Namespace) -> int:
    from modelpress.jobs.entrypoint import configure_logging, offline, run_job

    console = Console(stderr=True)
    offline()
    configure_logging()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelpress-"))
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

        summary = run_job(args.spec, workdir, progress)
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
