"""The validation gate: pure comparison of two measurements against the thresholds.

No I/O, no models: given the spec's ``validation`` block and the baseline/candidate
:class:`~modelpress.api.ModelMetrics`, say whether the candidate passes and, for every
broken threshold, what was measured against which limit, e.g.
``maxAccuracyDrop: drop 0.031 > 0.005 (absolute)``.

A measurement that is NaN or infinite fails its threshold: ``nan > budget`` is False,
so a plain comparison would let it pass. (The measurement refuses non-finite scores
already; this keeps the gate honest on its own.)

With ``validation.confidence`` the accuracy budget judges the one-sided upper
confidence bound of the drop instead of its point estimate, e.g. ``drop 0.004 [95%
upper 0.009]``: a paired percentile bootstrap over the samples (both models scored on
the same resample), seeded so the same measurements give the same verdict.
``validation.slices`` judge the drop on each class of the labels (``label=3``), or on each
value of a dataset column (``region=emea``), on its own, with the same confidence handling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from modelpress.api import ModelMetrics, Validation

Score = TypeVar("Score", float, np.ndarray)  # one score, or the bootstrap's array of them

# Threshold names as users write them (the API's wire aliases), for the messages.
NAME = {f: info.alias or f for f, info in Validation.model_fields.items()}
MB = 1_000_000  # maxSizeMB is in decimal megabytes, like `ls --si` and object stores
HIGHER_IS_BETTER = {"accuracy": True, "top5": True, "f1": True, "cosine": True, "mse": False}


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Resample weights held at once (8 bytes each): bounds the bootstrap's memory on a large dataset.
BOOTSTRAP_CELLS = 4_000_000


@dataclass(frozen=True)
class Paired:
    """Both models' :func:`modelpress.jobs.measure.per_sample` values on the same samples, in order."""

    baseline: np.ndarray
    candidate: np.ndarray
    labels: np.ndarray | None  # the dataset's labels: the classes label slices are cut by
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # column -> per-sample value: column slices


@dataclass
class GateResult:
    passed: bool
    accuracy_drop: float | None  # in metric units; positive = worse (for mse too)
    speedup: float | None  # baseline p50 / candidate p50
    size_ratio: float | None  # candidate bytes / baseline bytes
    failed: list[str] = field(default_factory=list)
    drop_bound: float | None = None  # upper confidence bound of accuracy_drop (validation.confidence)
    # "label=3" or "region=emea" -> drop (its bound with confidence)
    slice_drops: dict[str, float] = field(default_factory=dict)


def accuracy_drop(metric: str, baseline: Score, candidate: Score) -> Score:
    """How much worse the candidate scores, in metric units (positive = worse); element-wise
    for the bootstrap's arrays of resampled scores."""
    return baseline - candidate if HIGHER_IS_BETTER[metric] else candidate - baseline


def evaluate(
    validation: Validation, baseline: ModelMetrics, candidate: ModelMetrics, paired: Paired | None = None
) -> GateResult:
    """Check ``candidate`` against ``baseline`` and the thresholds in ``validation``.

    ``paired`` (per-sample values) is needed by ``confidence`` and ``slices``; without it
    they fail as unmeasured rather than pass unjudged.
    """
    metric = str(validation.metric)
    confidence = validation.confidence
    failed: list[str] = []
    drop = bound = None
    if baseline.score is not None and candidate.score is not None:
        drop = _finite(accuracy_drop(metric, baseline.score, candidate.score))
        budget = validation.max_accuracy_drop
        judged, shown = drop, _fmt(drop)
        if drop is not None and confidence is not None:
            bound = None if paired is None else _finite(drop_upper_bound(metric, paired, confidence))
            judged, shown = bound, f"{drop:.4g} [{_pct(confidence)} upper {_fmt(bound)}]"
        if drop is None:
            failed.append(f"{NAME['max_accuracy_drop']}: drop unmeasured (a score is NaN or infinite)")
        elif judged is None:
            failed.append(f"{NAME['max_accuracy_drop']}: drop {shown} (no per-sample results to bound it)")
        elif budget.absolute is not None and judged > budget.absolute:
            failed.append(f"{NAME['max_accuracy_drop']}: drop {shown} > {budget.absolute:.4g} (absolute)")
        if judged is not None and budget.relative is not None:
            relative = judged / abs(baseline.score) if baseline.score else (0.0 if judged <= 0 else float("inf"))
            if relative > budget.relative:
                failed.append(
                    f"{NAME['max_accuracy_drop']}: drop {relative:.4g} > {budget.relative:.4g} (relative; {shown} {metric})"
                )
    slice_drops: dict[str, float] = {}
    cuts: dict[str | None, dict[str, float]] = {}  # slice column (None: the labels) -> its slices' drops
    for i, spec in enumerate(validation.slices or []):
        where = f"{NAME['slices']}[{i}]"
        if spec.column not in cuts:
            cuts[spec.column] = _slices(metric, paired, spec.column, confidence)
            slice_drops.update(cuts[spec.column])
        drops = cuts[spec.column]
        over = sorted(((d, name) for name, d in drops.items() if d > spec.max_accuracy_drop), reverse=True)
        if not drops:
            cut = "labels" if spec.column is None else f"column {spec.column!r}"
            failed.append(f"{where}: unmeasured (no per-sample results with {cut})")
        elif over:
            worst, name = over[0]
            more = f" (worst of {len(over)} failing slices)" if len(over) > 1 else ""
            failed.append(f"{where}: slice {name}: drop {worst:.4g} > {spec.max_accuracy_drop:.4g}{more}")
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
    return GateResult(
        passed=not failed,
        accuracy_drop=drop,
        speedup=speedup,
        size_ratio=size_ratio,
        failed=failed,
        drop_bound=bound,
        slice_drops=slice_drops,
    )


def drop_upper_bound(
    metric: str, paired: Paired, confidence: float, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> float:
    """The one-sided ``confidence`` upper bound of the drop: percentile of a paired bootstrap.

    Each resample draws the samples with replacement once and scores *both* models on it,
    so what the two models share (hard samples) cancels out. Hand-written rather than
    ``scipy.stats.bootstrap``: expressing a resample as multinomial weights scores every
    metric, macro f1 included, in one vectorised pass per chunk, where scipy's default
    BCa jackknife needs n^2 memory and a non-vectorised f1 one call per resample. NaN
    (unmeasured) without samples.
    """
    n = len(paired.baseline)
    if n == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS // n)
    drops = []
    for start in range(0, resamples, chunk):
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start)).astype(np.float64)
        base = _weighted_score(metric, paired.baseline, paired.labels, weights)
        cand = _weighted_score(metric, paired.candidate, paired.labels, weights)
        drops.append(accuracy_drop(metric, base, cand))
    return float(np.quantile(np.concatenate(drops), confidence))


def _weighted_score(metric: str, values: np.ndarray, labels: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """The metric on each resample (a row of ``weights``: how often each sample was drawn)."""
    if metric != "f1":  # the mean of the per-sample values
        return weights @ values.astype(np.float64) / weights.shape[1]
    assert labels is not None  # measure scores f1 only with labels
    # Macro f1 as scikit-learn computes it: over the classes present in the truth or the
    # predictions of this resample, per class 2 TP / (true + predicted).
    classes, index = np.unique(np.concatenate([labels, values]), return_inverse=True)
    k, n = len(classes), len(labels)
    truth, pred = index[:n], index[n:]
    # Misses go to an extra bin k; without a miss, every class is hit (bin k-1 included),
    # so the counts always reach at least k bins.
    hits = np.where(truth == pred, truth, k)
    scores = []
    for w in weights:
        tp = np.bincount(hits, w)[:k]
        support = np.bincount(truth, w, k) + np.bincount(pred, w, k)
        present = support > 0
        scores.append(float(np.mean(2.0 * tp[present] / support[present])))
    return np.array(scores)


def _slices(metric: str, paired: Paired | None, column: str | None, confidence: float | None) -> dict[str, float]:
    """``label=<class>`` (``column`` None) or ``<column>=<value>`` -> the drop on those samples
    (its upper bound with ``confidence``); empty when the samples have no such values."""
    keys = None if paired is None else (paired.labels if column is None else paired.groups.get(column))
    if paired is None or keys is None:
        return {}
    out = {}
    for value in np.unique(keys):
        mask = keys == value
        # Slice metrics are means of per-sample values (SLICE_METRICS): a part needs no labels.
        part = Paired(paired.baseline[mask], paired.candidate[mask], None)
        if confidence is None:
            drop = accuracy_drop(metric, float(np.mean(part.baseline)), float(np.mean(part.candidate)))
        else:
            drop = drop_upper_bound(metric, part, confidence)
        shown = value.item() if isinstance(value, np.generic) else value  # strings come as objects
        out[f"{'label' if column is None else column}={shown}"] = drop
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _finite(value: float | None) -> float | None:
    """``value``, or None (unmeasured, which fails a threshold) when it is NaN or infinite."""
    return value if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.4g}"


def _pct(confidence: float) -> str:
    return f"{confidence * 100:.4g}%"
