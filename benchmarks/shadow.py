"""Shadow benchmark: what shadowing costs the stable model, and how many samples a verdict takes.

(a) cost — the stable digits artifact (the pipeline's own, as benchmarks/serve.py builds it)
served twice at once by ``python -m modelpress.jobs.serving``: alone, and with
``--shadow_model_dir`` (the candidate: the uncompressed source model, ``--shadow_fraction``
0.1, classification). The same closed-loop load (one client, batch 1, V1 JSON, prebuilt
requests) alternates short rounds between the two, so background load hits both alike.
Target (issue 13): p95 with 10% sampling <= 1.05x p95 without.

(b) samples to a verdict — the operator's rule for top-1 agreement: Fail once the one-sided
Wilson upper bound of the agreement (``modelpress.operator.analysis.wilson_upper_bound``,
imported, not copied) at ``confidence`` falls below ``minAgreement``, judged every ``k``
compared samples from ``minSamples`` on. Simulated with numpy (seeded): a candidate agreeing
97% against minAgreement 0.99 at confidence 0.95 — samples until it is stopped (median,
p95); and one agreeing 99.5% — how often it is wrongly failed within the horizon.

    .venv/bin/python benchmarks/shadow.py [--skip-cost] [--rounds 12] [--runs 10000]

Results: benchmarks/results/shadow.json and tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402  (benchmarks/serve.py: artifact build, servers, raw client)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "shadow.json"
TARGET_P95_RATIO = 1.05


# --- (a) the cost on the stable model -----------------------------------------------------------


def shadow_cost(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="modelpress-shadow-bench-") as tmp:
        root = Path(tmp)
        bench = serve.build_digits(root)
        stable, candidate = bench.artifacts["compressed"], bench.artifacts["fp32"]
        shadow_flags = [
            f"--shadow_model_dir={candidate}", f"--shadow_fraction={args.fraction}", "--shadow_task=classification",
        ]  # fmt: skip
        servers = {
            "alone": serve.start_server(stable, args.threads, root / "alone.log"),
            "shadowed": serve.start_server(stable, args.threads, root / "shadowed.log", shadow_flags),
        }
        try:
            conns = {k: serve.Connection(port) for k, (_, port) in servers.items()}
            requests = [serve.v1_request(x) for x in bench.inputs]
            lat: dict[str, list[float]] = {k: [] for k in servers}
            errors = dict.fromkeys(servers, 0)
            index = dict.fromkeys(servers, 0)
            for warm in (True, *([False] * args.rounds)):
                for k in servers:
                    call = lambda r, c=conns[k]: c.roundtrip(r) == 200  # noqa: E731
                    got, errs, index[k] = serve.timed_block(
                        call, requests, args.warmup if warm else args.block, index[k]
                    )
                    if not warm:
                        lat[k] += got
                        errors[k] += errs
            metrics = scrape_shadow(servers["shadowed"][1])
        finally:
            for proc, _ in servers.values():
                serve.stop_server(proc)
    result: dict[str, Any] = {k: serve.summary(v) | {"errors": errors[k]} for k, v in lat.items()}
    result["p50_ratio"] = round(result["shadowed"]["p50_ms"] / result["alone"]["p50_ms"], 3)
    result["p95_ratio"] = round(result["shadowed"]["p95_ms"] / result["alone"]["p95_ms"], 3)
    result["rps_ratio"] = round(result["shadowed"]["requests_per_s"] / result["alone"]["requests_per_s"], 3)
    result["shadow_metrics"] = metrics
    result["target_met"] = result["p95_ratio"] <= TARGET_P95_RATIO
    return result


def scrape_shadow(port: int) -> dict[str, float]:
    """The shadowed server's own counters: proof that it compared (and how much it dropped)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "modelpress_shadow_requests_total":
                out[f"requests_{s.labels['outcome']}"] = s.value
            elif s.name in ("modelpress_shadow_samples_total", "modelpress_shadow_top1_agreements_total"):
                out[s.name.removeprefix("modelpress_shadow_").removesuffix("_total")] = s.value
    return out


# --- (b) samples to a verdict -------------------------------------------------------------------


def fail_thresholds(checkpoints: np.ndarray, bound: float, confidence: float) -> np.ndarray:
    """For each checkpoint n: the most agreements s for which the operator fails (upper bound <
    minAgreement), -1 when none. The bound rises with s, so a bisection over the operator's own
    function finds it; runs are then judged by one comparison per checkpoint."""
    from modelpress.operator.analysis import wilson_upper_bound

    out = np.full(len(checkpoints), -1, dtype=np.int64)
    for i, n in enumerate(checkpoints):
        lo, hi = -1, int(n)  # invariant: fails at lo (or lo == -1), passes at hi
        if wilson_upper_bound(n, n, confidence) < bound:  # even all agreeing fails: bound above reach
            out[i] = n
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if wilson_upper_bound(mid, n, confidence) < bound:
                lo = mid
            else:
                hi = mid
        out[i] = lo
    return out


def samples_to_fail(p: float, runs: int, checkpoints: np.ndarray, thresholds: np.ndarray, seed: int) -> np.ndarray:
    """Per run: compared samples when the operator first fails the candidate (inf: never in the horizon)."""
    rng = np.random.default_rng(seed)
    steps = np.diff(checkpoints, prepend=0)
    out = []
    for start in range(0, runs, 500):  # chunks of runs: runs x checkpoints int64 would not fit at k=1
        agreements = np.cumsum(rng.binomial(steps, p, size=(min(500, runs - start), len(steps))), axis=1)
        failed = agreements <= thresholds
        first = np.where(failed.any(axis=1), failed.argmax(axis=1), -1)
        out.append(np.where(first >= 0, checkpoints[np.maximum(first, 0)], np.inf))
    return np.concatenate(out)


def detection(args: argparse.Namespace) -> dict[str, Any]:
    from modelpress.api import Shadow

    floors = args.min_samples or [Shadow().min_samples, 200, 1]
    out: dict[str, Any] = {
        "rule": "Fail when wilson_upper_bound(agreements, samples, confidence) < minAgreement "
        "(modelpress.operator.analysis), judged every k samples from minSamples on",
        "min_agreement": args.bound,
        "confidence": args.confidence,
        "min_samples": floors,
        "horizon_samples": args.horizon,
        "runs": args.runs,
        "seed": args.seed,
        "by_min_samples_and_k": {},
    }
    for min_samples, k in ((m, k) for m in floors for k in args.every):
        checkpoints = np.arange(max(min_samples, k), args.horizon + 1, k)
        thresholds = fail_thresholds(checkpoints, args.bound, args.confidence)
        bad = samples_to_fail(args.bad, args.runs, checkpoints, thresholds, args.seed)
        good = samples_to_fail(args.good, args.runs, checkpoints, thresholds, args.seed + 1)
        caught = np.isfinite(bad)
        out["by_min_samples_and_k"][f"{min_samples}/{k}"] = {
            f"agreement_{args.bad}": {
                "detected_share": round(float(caught.mean()), 4),
                "median_samples": float(np.median(bad)),
                "p95_samples": float(np.percentile(bad, 95)),
                "mean_samples": round(float(bad[caught].mean()), 1) if caught.any() else None,
            },
            f"agreement_{args.good}": {"false_fail_rate": round(float(np.isfinite(good).mean()), 5)},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-cost", action="store_true", help="only the simulation (b)")
    parser.add_argument("--rounds", type=int, default=12, help="(a) alternating rounds")
    parser.add_argument("--block", type=float, default=1.0, help="(a) seconds per server per round")
    parser.add_argument("--warmup", type=float, default=2.0, help="(a) unmeasured seconds per server first")
    parser.add_argument("--threads", type=int, default=1, help="(a) onnxruntime intra-op threads")
    parser.add_argument("--fraction", type=float, default=0.1, help="(a) --shadow_fraction")
    parser.add_argument("--bad", type=float, default=0.97, help="(b) true agreement of the candidate to stop")
    parser.add_argument("--good", type=float, default=0.995, help="(b) true agreement of a candidate to pass")
    parser.add_argument("--bound", type=float, default=0.99, help="(b) minAgreement")
    parser.add_argument("--confidence", type=float, default=0.95, help="(b) confidence")
    parser.add_argument(
        "--min-samples", type=int, nargs="+", help="(b) minSamples (default: the API's, 200, and 1: the test alone)"
    )
    parser.add_argument("--every", type=int, nargs="+", default=[1, 50, 500], help="(b) judged every k samples")
    parser.add_argument("--horizon", type=int, default=20_000, help="(b) most samples simulated per run")
    parser.add_argument("--runs", type=int, default=10_000, help="(b) simulated runs per candidate")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    started = time.monotonic()
    results: dict[str, Any] = {"detection": detection(args)}
    d = results["detection"]
    table = Table(
        title=f"samples to stop a {args.bad} candidate (minAgreement {args.bound}, confidence {args.confidence}, "
        f"{args.runs} seeded runs, horizon {args.horizon} samples)"
    )
    for col in (
        "minSamples / judged every k",
        "detected",
        "median samples",
        "p95 samples",
        f"false fails at {args.good}",
    ):
        table.add_column(col, justify="right")
    for k, r in d["by_min_samples_and_k"].items():
        bad, good = r[f"agreement_{args.bad}"], r[f"agreement_{args.good}"]
        table.add_row(
            k, f"{bad['detected_share']:.2%}", f"{bad['median_samples']:.0f}", f"{bad['p95_samples']:.0f}",
            f"{good['false_fail_rate']:.3%}",
        )  # fmt: skip
    console.print(table)

    if not args.skip_cost:
        results["cost"] = c = shadow_cost(args)
        table = Table(title=f"shadow cost on the stable digits model: --shadow_fraction {args.fraction}, interleaved")
        for col in ("stable", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
            table.add_column(col, justify="left" if col == "stable" else "right")
        for k in ("alone", "shadowed"):
            s = c[k]
            table.add_row(
                k,
                f"{s['requests_per_s']:.0f}",
                f"{s['p50_ms']:.3f}",
                f"{s['p95_ms']:.3f}",
                f"{s['p99_ms']:.3f}",
                str(s["errors"]),
            )
        table.add_row(
            "shadowed/alone", f"{c['rps_ratio']:.3f}x", f"{c['p50_ratio']:.3f}x", f"{c['p95_ratio']:.3f}x", "", ""
        )
        console.print(table)
        console.print(f"shadowed server's counters: {c['shadow_metrics']}")

    document = {
        "benchmark": "shadow",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
        },
        "targets": {"cost": f"p95 shadowed <= {TARGET_P95_RATIO}x p95 alone, same closed-loop load"},
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
