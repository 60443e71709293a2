"""The validation gate at its edges: every metric's direction and every threshold exactly at its limit.

The values are exact in binary floating point (0.75 - 0.625 is exactly 0.125), so
"exactly at the limit" really is equality, and one step past it really is past.
"""

from __future__ import annotations

import math

import pytest

from modelpress.api import ModelMetrics, Validation
from modelpress.jobs import gate

HIGHER_IS_BETTER = ["accuracy", "top5", "f1", "cosine"]


def validation(metric: str = "accuracy", **kw) -> Validation:
    return Validation.model_validate(
        {
            "dataset": {"storageUri": "file:///v.npz", "format": "npz"},
            "metric": metric,
            "maxAccuracyDrop": {"absolute": 0.125},
            **kw,
        }
    )


def scores(metric: str, baseline: float, candidate: float, **kw) -> gate.GateResult:
    return gate.evaluate(validation(metric, **kw), ModelMetrics(score=baseline), ModelMetrics(score=candidate))


@pytest.mark.parametrize("metric", HIGHER_IS_BETTER)
def test_higher_is_better_metrics_count_a_lower_score_as_the_drop(metric: str) -> None:
    assert gate.accuracy_drop(metric, 0.75, 0.5) == 0.25
    better = scores(metric, 0.75, 1.0)
    assert (better.passed, better.accuracy_drop, better.failed) == (True, -0.25, [])
    worse = scores(metric, 0.75, 0.5)
    assert (worse.passed, worse.accuracy_drop) == (False, 0.25)
    assert worse.failed == ["maxAccuracyDrop: drop 0.25 > 0.125 (absolute)"]


def test_mse_counts_a_higher_error_as_the_drop() -> None:
    assert gate.accuracy_drop("mse", 0.75, 0.5) == -0.25
    better = scores("mse", 0.75, 0.5)
    assert (better.passed, better.accuracy_drop, better.failed) == (True, -0.25, [])
    worse = scores("mse", 0.75, 1.0)
    assert (worse.passed, worse.accuracy_drop, worse.failed) == (
        False,
        0.25,
        ["maxAccuracyDrop: drop 0.25 > 0.125 (absolute)"],
    )


def test_every_metric_has_a_direction() -> None:
    assert set(gate.HIGHER_IS_BETTER) == {m.value for m in Validation.model_fields["metric"].annotation}


@pytest.mark.parametrize("metric", [*HIGHER_IS_BETTER, "mse"])
def test_an_absolute_drop_exactly_at_the_budget_passes_and_one_past_fails(metric: str) -> None:
    baseline, at_limit = (0.75, 0.625) if metric != "mse" else (0.625, 0.75)
    assert scores(metric, baseline, at_limit).passed
    past = 0.624 if metric != "mse" else 0.751
    assert not scores(metric, baseline, past).passed


def test_a_relative_drop_exactly_at_the_budget_passes_and_past_it_fails() -> None:
    relative = {"maxAccuracyDrop": {"relative": 0.25}}
    at_limit = scores("accuracy", 0.5, 0.375, **relative)
    assert (at_limit.passed, at_limit.accuracy_drop) == (True, 0.125)
    past = scores("accuracy", 0.5, 0.25, **relative)
    assert past.failed == ["maxAccuracyDrop: drop 0.5 > 0.25 (relative; 0.25 accuracy)"]


def test_a_relative_drop_is_a_fraction_of_the_baseline_size_even_when_it_is_negative() -> None:
    # cosine similarity can be negative: -0.5 -> -0.75 is a drop of 0.25, half of |-0.5|
    relative = {"maxAccuracyDrop": {"relative": 0.5}}
    assert scores("cosine", -0.5, -0.75, **relative).passed
    assert scores("cosine", -0.5, -0.875, **relative).failed == [
        "maxAccuracyDrop: drop 0.75 > 0.5 (relative; 0.375 cosine)"
    ]


@pytest.mark.parametrize(
    ("metric", "candidate", "failed"),
    [
        ("mse", 0.0, []),  # a perfect baseline matched: no drop at all
        ("mse", -0.0, []),
        ("accuracy", 0.25, []),  # better than a zero baseline
        ("mse", 0.125, ["maxAccuracyDrop: drop inf > 0.01 (relative; 0.125 mse)"]),  # any drop from zero is infinite
        ("cosine", -0.125, ["maxAccuracyDrop: drop inf > 0.01 (relative; 0.125 cosine)"]),
    ],
)
def test_the_relative_budget_with_a_zero_baseline(metric: str, candidate: float, failed: list[str]) -> None:
    result = scores(metric, 0.0, candidate, maxAccuracyDrop={"relative": 0.01})
    assert (result.passed, result.failed) == (not failed, failed)


def test_thresholds_exactly_at_their_limits_pass() -> None:
    v = validation(minSpeedup=1.5, maxLatencyMs=2.5, maxSizeMB=1.5)
    base = ModelMetrics(score=0.75, latency_p50_ms=3.0, latency_p95_ms=4.0, size_bytes=6_000_000)
    at_limit = ModelMetrics(score=0.625, latency_p50_ms=2.0, latency_p95_ms=2.5, size_bytes=1_500_000)
    result = gate.evaluate(v, base, at_limit)
    assert result == gate.GateResult(passed=True, accuracy_drop=0.125, speedup=1.5, size_ratio=0.25, failed=[])


def test_thresholds_just_past_their_limits_fail_with_value_and_limit() -> None:
    v = validation(minSpeedup=1.5, maxLatencyMs=2.5, maxSizeMB=1.5)
    base = ModelMetrics(score=0.75, latency_p50_ms=3.0, latency_p95_ms=4.0, size_bytes=6_000_000)
    past = ModelMetrics(score=0.5, latency_p50_ms=2.5, latency_p95_ms=2.5001, size_bytes=1_500_001)
    result = gate.evaluate(v, base, past)
    assert not result.passed
    assert result.failed == [
        "maxAccuracyDrop: drop 0.25 > 0.125 (absolute)",
        "minSpeedup: speedup 1.2x < 1.5x",
        "maxLatencyMs: p95 2.5 ms > 2.5 ms",
        "maxSizeMB: 1.5 MB > 1.5 MB",
    ]


def test_sizes_are_decimal_megabytes() -> None:
    v = validation(maxSizeMB=2.0)
    assert gate.evaluate(v, ModelMetrics(), ModelMetrics(size_bytes=2_000_000)).passed
    assert gate.evaluate(v, ModelMetrics(), ModelMetrics(size_bytes=2_097_152)).failed == ["maxSizeMB: 2.097 MB > 2 MB"]


def test_a_threshold_without_its_measurement_fails_and_says_unmeasured() -> None:
    v = validation(minSpeedup=1.5, maxLatencyMs=2.5, maxSizeMB=1.5)
    result = gate.evaluate(v, ModelMetrics(score=0.75, latency_p50_ms=3.0), ModelMetrics(score=0.75))
    assert result.failed == [
        "minSpeedup: speedup unmeasuredx < 1.5x",
        "maxLatencyMs: p95 unmeasured ms > 2.5 ms",
        "maxSizeMB: unmeasured MB > 1.5 MB",
    ]
    assert (result.passed, result.speedup, result.size_ratio) == (False, None, None)


def test_unset_thresholds_need_no_measurement() -> None:
    assert gate.evaluate(validation(), ModelMetrics(), ModelMetrics()) == gate.GateResult(
        passed=True, accuracy_drop=None, speedup=None, size_ratio=None, failed=[]
    )


def test_one_missing_score_is_no_accuracy_drop_and_no_crash() -> None:
    assert scores("accuracy", 0.75, None).accuracy_drop is None
    assert scores("accuracy", None, 0.75).accuracy_drop is None


def test_a_non_finite_score_fails_once_even_with_a_relative_budget() -> None:
    result = scores("accuracy", 0.75, math.nan, maxAccuracyDrop={"relative": 0.5})
    assert result.failed == ["maxAccuracyDrop: drop unmeasured (a score is NaN or infinite)"]


@pytest.mark.parametrize(
    ("base_p50", "cand_p50", "base_size", "cand_size", "speedup", "size_ratio"),
    [
        (3.0, 2.0, 4, 1, 1.5, 0.25),
        (None, 2.0, None, 1, None, None),  # nothing to divide
        (3.0, 0.0, 4, 0, None, 0.0),  # a zero latency is no speedup; a zero size is a ratio of 0
        (3.0, None, 0, 1, None, None),
    ],
)
def test_ratios(base_p50, cand_p50, base_size, cand_size, speedup, size_ratio) -> None:
    result = gate.evaluate(
        validation(),
        ModelMetrics(latency_p50_ms=base_p50, size_bytes=base_size),
        ModelMetrics(latency_p50_ms=cand_p50, size_bytes=cand_size),
    )
    assert (result.speedup, result.size_ratio) == (speedup, size_ratio)


@pytest.mark.parametrize(
    ("value", "finite"), [(1.5, 1.5), (0.0, 0.0), (math.inf, None), (-math.inf, None), (math.nan, None), (None, None)]
)
def test_finite(value, finite) -> None:
    assert gate._finite(value) == finite
