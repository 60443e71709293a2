"""The validation gate: pure comparison of two measurements against the thresholds.

No I/O, no models: given the spec's ``validation`` block and the baseline/candidate
:class:`~modelpress.api.ModelMetrics`, say whether the candidate passes and, for every
broken threshold, what was measured against which limit, e.g.
``maxAccuracyDrop: drop 0.031 > 0.005 (absolute)``.

A measurement that is NaN or infinite fails its threshold: ``nan > budget`` is False,
so a plain comparison would let it pass. (The measurement refuses non-finite scores
already; this keeps the gate honest on its own.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelpress.api import ModelMetrics, Validation

# Threshold names as users write them (the API's wire aliases), for the messages.
NAME = {f: info.alias or f for f, info in Validation.model_fields.items()}
MB = 1_000_000  # maxSizeMB is in decimal megabytes, like `ls --si` and object stores
HIGHER_IS_BETTER = {"accuracy": True, "top5": True, "f1": True, "cosine": True, "mse": False}


@dataclass
class GateResult:
    passed: bool
    accuracy_drop: float | None  # in metric units; positive = worse (for mse too)
    speedup: float | None  # baseline p50 / candidate p50
    size_ratio: float | None  # candidate bytes / baseline bytes
    failed: list[str] = field(default_factory=list)


def accuracy_drop(metric: str, baseline: float, candidate: float) -> float:
    """How much worse the candidate scores, in metric units (positive = worse)."""
    return baseline - candidate if HIGHER_IS_BETTER[metric] else candidate - baseline


def evaluate(validation: Validation, baseline: ModelMetrics, candidate: ModelMetrics) -> GateResult:
    """Check ``candidate`` against ``baseline`` and the thresholds in ``validation``."""
    metric = str(validation.metric)
    failed: list[str] = []
    drop = None
    if baseline.score is not None and candidate.score is not None:
        drop = _finite(accuracy_drop(metric, baseline.score, candidate.score))
        budget = validation.max_accuracy_drop
        if drop is None:
            failed.append(f"{NAME['max_accuracy_drop']}: drop unmeasured (a score is NaN or infinite)")
        elif budget.absolute is not None and drop > budget.absolute:
            failed.append(f"{NAME['max_accuracy_drop']}: drop {drop:.4g} > {budget.absolute:.4g} (absolute)")
        if drop is not None and budget.relative is not None:
            relative = drop / abs(baseline.score) if baseline.score else (0.0 if drop <= 0 else float("inf"))
            if relative > budget.relative:
                failed.append(
                    f"{NAME['max_accuracy_drop']}: drop {relative:.4g} > {budget.relative:.4g} (relative; {drop:.4g} {metric})"
                )
    speedup = _finite(_ratio(baseline.latency_p50_ms, candidate.latency_p50_ms))
    if validation.min_speedup is not None and (speedup is None or speedup < validation.min_speedup):
        failed.append(f"{NAME['min_speedup']}: speedup {_fmt(speedup)}x < {validation.min_speedup:.4g}x")
    p95 = _finite(candidate.latency_p95_ms)
    if validation.max_latency_ms is not None and (p95 is None or p95 > validation.max_latency_ms):
        failed.append(f"{NAME['max_latency_ms']}: p95 {_fmt(p95)} ms > {validation.max_latency_ms:.4g} ms")
    size = candidate.size_bytes
    if validation.max_size_mb is not None and (size is None or size / MB > validation.max_size_mb):
        failed.append(
            f"{NAME['max_size_mb']}: {_fmt(None if size is None else size / MB)} MB > {validation.max_size_mb:.4g} MB"
        )
    size_ratio = _ratio(candidate.size_bytes, baseline.size_bytes)
    return GateResult(passed=not failed, accuracy_drop=drop, speedup=speedup, size_ratio=size_ratio, failed=failed)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _finite(value: float | None) -> float | None:
    """``value``, or None (unmeasured, which fails a threshold) when it is NaN or infinite."""
    return value if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.4g}"
