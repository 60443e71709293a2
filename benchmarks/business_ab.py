"""Business-metric canary benchmark: a simulated A/B with known true click-through rates.

The operator's rule for ``rollout.analysis.business`` with ``kind: rate``
(``modelpress.operator.analysis``, imported, not copied): Fail once the one-sided
two-proportion test of H0 ``p_c >= (1 - maxRelativeDrop) p_s`` gives p below
``1 - confidence``; fewer than ``minSamples`` outcomes in either arm holds. The canary
analysis judges the feedback counted so far at every interval; here an interval brings
``every`` canary outcomes (and the stable arm its share of the split), judged from
``minSamples`` on up to a horizon. Each request gets one binary outcome (an impression is
clicked or not), so outcomes per arm are requests per arm. Simulated with numpy (seeded):

* detection -- the canary's true CTR is 10% below stable's: canary requests until the first
  Fail (median, p95; runs never stopped within the horizon count as not detected);
* false alarms -- equal true CTRs (the null runs of the issue) and, with a tolerated drop,
  a canary exactly at the tolerance (the boundary of H0, where the test's size is decided):
  the share of runs failed within the horizon, and at the first judged interval alone. Judging
  again at every interval is repeated testing: the first look holds the nominal
  ``1 - confidence``, the whole horizon does not; the table says by how much.

    .venv/bin/python benchmarks/business_ab.py [--runs 1000] [--ctr 0.05] [--every 1000]

Results: benchmarks/results/business_ab.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.api import Business
from modelpress.operator.analysis import FeedbackArm, judge_business, rate_drop_test

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "business_ab.json"
TRUE_DROP = 0.10  # the case: a canary 10% worse than stable


def requests_to_fail(
    business: Business,
    ctr_stable: float,
    ctr_canary: float,
    canary_percent: int,
    every: int,
    horizon: int,
    runs: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per run: canary requests when the operator first fails the canary (inf: not within the horizon)."""
    stable_every = stable_share(every, canary_percent)
    checks = horizon // every
    # Cumulative outcomes at each interval, all runs at once; the verdicts one by one below.
    clicks_c = rng.binomial(every, ctr_canary, size=(runs, checks)).cumsum(axis=1)
    clicks_s = rng.binomial(stable_every, ctr_stable, size=(runs, checks)).cumsum(axis=1)
    alpha = 1.0 - business.confidence
    first = np.full(runs, np.inf)
    start = first_look(business.min_samples, every, canary_percent) // every - 1
    for r in range(runs):
        for j in range(start, checks):
            n_c, n_s = (j + 1) * every, (j + 1) * stable_every
            canary, stable = FeedbackArm(n_c, float(clicks_c[r, j])), FeedbackArm(n_s, float(clicks_s[r, j]))
            if rate_drop_test(canary, stable, business.max_relative_drop)[1] < alpha:
                # The p-value is the operator's; its whole verdict must agree (one call per stopped run).
                assert judge_business(business, canary, stable, "sim").failed
                first[r] = n_c
                break
    return first


def stable_share(every: int, canary_percent: int) -> int:
    """The stable arm's outcomes per interval when the canary gets ``every``."""
    return round(every * (100 - canary_percent) / canary_percent)


def first_look(min_samples: int, every: int, canary_percent: int) -> int:
    """Canary requests at the first interval that has minSamples in both arms."""
    intervals = max(-(-min_samples // every), -(-min_samples // stable_share(every, canary_percent)))
    return intervals * every


def summarise(first: np.ndarray, look: int) -> dict[str, Any]:
    stopped = first[np.isfinite(first)]
    return {
        "failed_share": round(float(stopped.size / first.size), 4),
        "failed_at_first_look_share": round(float(np.mean(first == look)), 4),
        "median_requests": float(np.median(stopped)) if stopped.size else None,
        "p95_requests": float(np.percentile(stopped, 95)) if stopped.size else None,
    }


def scenario(business: Business, args: argparse.Namespace, percent: int, rng: np.random.Generator) -> dict[str, Any]:
    """Detection and false alarms of one tolerance at one traffic split."""
    look = first_look(business.min_samples, args.every, percent)

    def run(ctr_canary: float) -> dict[str, Any]:
        first = requests_to_fail(business, args.ctr, ctr_canary, percent, args.every, args.horizon, args.runs, rng)
        return summarise(first, look)

    out = {
        "first_look_canary_requests": look,
        "detect_10pct_drop": run(args.ctr * (1 - TRUE_DROP)),
        "null_equal_ctr": run(args.ctr),
    }
    if business.max_relative_drop > 0:
        out["null_at_tolerance"] = run(args.ctr * (1 - business.max_relative_drop))
    return out


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    out: dict[str, Any] = {}
    for drop in args.max_relative_drop:
        business = Business(
            name="ctr", kind="rate", minSamples=args.min_samples, maxRelativeDrop=drop, confidence=args.confidence
        )
        for percent in args.canary_percent:
            out[f"maxRelativeDrop={drop}/canary={percent}%"] = scenario(business, args, percent, rng)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctr", type=float, default=0.05, help="stable arm's true click-through rate")
    parser.add_argument("--max-relative-drop", type=float, nargs="+", default=[0.05, 0.0])
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--min-samples", type=int, default=1000, help="minSamples per arm")
    parser.add_argument("--canary-percent", type=int, nargs="+", default=[50, 10], help="canary's traffic share")
    parser.add_argument("--every", type=int, default=1000, help="canary outcomes per analysis interval")
    parser.add_argument("--horizon", type=int, default=300_000, help="most canary requests simulated per run")
    parser.add_argument("--runs", type=int, default=1000, help="simulated runs per scenario")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    started = time.monotonic()
    results = simulate(args)
    table = Table(
        title=f"canary requests to fail a {TRUE_DROP:.0%} CTR drop (stable CTR {args.ctr}, confidence "
        f"{args.confidence}, minSamples {args.min_samples}, judged every {args.every} canary outcomes, "
        f"{args.runs} seeded runs, horizon {args.horizon} canary requests)"
    )
    for col in ("maxRelativeDrop / canary share", "detected", "median", "p95", "false alarms: equal CTR",
                "at the tolerance"):  # fmt: skip
        table.add_column(col, justify="right")

    def alarms(r: dict[str, Any] | None) -> str:
        return f"{r['failed_share']:.1%} ({r['failed_at_first_look_share']:.1%} at first look)" if r else "(same)"

    for key, r in results.items():
        detect = r["detect_10pct_drop"]
        table.add_row(
            key, f"{detect['failed_share']:.1%}", f"{detect['median_requests'] or float('nan'):.0f}",
            f"{detect['p95_requests'] or float('nan'):.0f}", alarms(r["null_equal_ctr"]),
            alarms(r.get("null_at_tolerance")),
        )  # fmt: skip
    Console(width=200).print(table)

    document = {
        "benchmark": "business_ab",
        "rule": "Fail when rate_drop_test(canary, stable, maxRelativeDrop) p < 1 - confidence "
        "(modelpress.operator.analysis; judge_business agrees at every stop), judged every `every` canary outcomes "
        "from minSamples per arm on; requests counted for the canary arm",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "true_drop": TRUE_DROP,
        "environment": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
