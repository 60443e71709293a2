"""The validation gate at its edges: every metric's direction and every threshold exactly at its limit.

The values are exact in binary floating point (0.75 - 0.625 is exactly 0.125), so
"exactly at the limit" really is equality, and one step past it really is past.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelpress.api import ModelMetrics, Validation
from modelpress.jobs import gate, measure

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


# --------------------------------------------------------------------------- confidence bound and slices


def paired(base: list[float], cand: list[float], labels: list[int] | None = None) -> gate.Paired:
    return gate.Paired(np.array(base, float), np.array(cand, float), None if labels is None else np.array(labels))


def judged(
    base: list[float], cand: list[float], labels: list[int] | None = None, metric: str = "accuracy", **kw
) -> gate.GateResult:
    """The gate on per-sample values; the scores are their means, as measure computes them."""
    return gate.evaluate(
        validation(metric, **kw),
        ModelMetrics(score=float(np.mean(base))),
        ModelMetrics(score=float(np.mean(cand))),
        paired(base, cand, labels),
    )


def test_a_point_drop_within_budget_whose_upper_bound_is_not_is_rejected() -> None:
    # 4 of 128 samples lost: a drop of 0.03125 is within 0.05, but 128 samples cannot show it is not 0.06
    budget = {"maxAccuracyDrop": {"absolute": 0.05}}
    base, cand = [1.0] * 128, [0.0] * 4 + [1.0] * 124
    assert judged(base, cand, **budget).passed  # the point estimate alone passes
    result = judged(base, cand, confidence=0.95, **budget)
    bound = gate.drop_upper_bound("accuracy", paired(base, cand), 0.95)
    assert 0.05 < bound < 0.1 and result.drop_bound == bound
    assert (result.passed, result.accuracy_drop) == (False, 0.03125)
    assert result.failed == [f"maxAccuracyDrop: drop 0.03125 [95% upper {bound:.4g}] > 0.05 (absolute)"]


def test_a_clearly_good_candidate_passes_at_its_upper_bound() -> None:
    base, cand = [1.0] * 2000, [0.0] * 20 + [1.0] * 1980  # 1% lost on 2000 samples
    result = judged(base, cand, confidence=0.95, maxAccuracyDrop={"absolute": 0.05})
    assert result.passed and result.accuracy_drop < result.drop_bound < 0.02


def test_the_bound_is_seeded_and_grows_with_the_confidence() -> None:
    data = paired([1.0] * 50 + [0.0] * 50, [1.0] * 40 + [0.0] * 60)
    at_95 = gate.drop_upper_bound("accuracy", data, 0.95)
    assert at_95 == gate.drop_upper_bound("accuracy", data, 0.95)  # same data, same verdict
    assert gate.drop_upper_bound("accuracy", data, 0.5) < at_95 < gate.drop_upper_bound("accuracy", data, 0.99)
    assert gate.drop_upper_bound("accuracy", data, 0.95, seed=1) != at_95
    assert at_95 == pytest.approx(0.1505, abs=1e-9)  # 1000 resamples, seed 0: pinned, so a change shows


def test_the_bootstrap_is_paired_so_shared_misses_cancel() -> None:
    # both models miss the same 30 samples: no drop on any resample, a bound of exactly 0
    same = [0.0] * 30 + [1.0] * 70
    assert gate.drop_upper_bound("accuracy", paired(same, same), 0.999) == 0.0
    # lower is better for mse: a candidate whose error is higher on every sample has a positive drop
    assert gate.drop_upper_bound("mse", paired([0.5] * 10, [0.75] * 10), 0.95) == 0.25


def test_the_bootstrap_bounds_its_memory_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    data = paired([1.0] * 60 + [0.0] * 40, [1.0] * 50 + [0.0] * 50)
    whole = gate.drop_upper_bound("accuracy", data, 0.9, resamples=7)
    drawn: list[int] = []
    real_rng = np.random.default_rng

    class Spy:
        def __init__(self, seed: int) -> None:
            self.rng = real_rng(seed)

        def multinomial(self, n: int, p: np.ndarray, size: int) -> np.ndarray:
            drawn.append(size)
            return self.rng.multinomial(n, p, size=size)

    monkeypatch.setattr(gate.np.random, "default_rng", Spy)
    for cells, chunks in [(300, [3, 3, 1]), (50, [1] * 7), (10_000, [7])]:  # 100 samples a resample
        drawn.clear()
        monkeypatch.setattr(gate, "BOOTSTRAP_CELLS", cells)
        assert gate.drop_upper_bound("accuracy", data, 0.9, resamples=7) == whole
        assert drawn == chunks


def test_no_samples_is_an_unmeasured_bound_that_fails() -> None:
    assert math.isnan(gate.drop_upper_bound("accuracy", paired([], []), 0.95))
    v = validation(confidence=0.95)
    result = gate.evaluate(v, ModelMetrics(score=0.75), ModelMetrics(score=0.75), paired([], []))
    assert result.failed == ["maxAccuracyDrop: drop 0 [95% upper unmeasured] (no per-sample results to bound it)"]


def test_confidence_without_per_sample_results_fails_rather_than_passing_unjudged() -> None:
    result = scores("accuracy", 0.75, 0.75, confidence=0.95)
    assert (result.passed, result.drop_bound) == (False, None)
    assert result.failed == ["maxAccuracyDrop: drop 0 [95% upper unmeasured] (no per-sample results to bound it)"]


def test_without_confidence_per_sample_results_change_nothing() -> None:
    result = judged([1.0] * 128, [0.0] * 4 + [1.0] * 124, maxAccuracyDrop={"absolute": 0.05})
    assert result == gate.GateResult(passed=True, accuracy_drop=0.03125, speedup=None, size_ratio=None, failed=[])


def test_a_relative_budget_judges_the_bound_relative_to_the_baseline() -> None:
    base, cand = [1.0] * 128, [0.0] * 4 + [1.0] * 124
    bound = gate.drop_upper_bound("accuracy", paired(base, cand), 0.975)
    result = judged(base, cand, confidence=0.975, maxAccuracyDrop={"relative": 0.05})
    assert result.failed == [
        f"maxAccuracyDrop: drop {bound:.4g} > 0.05 (relative; 0.03125 [97.5% upper {bound:.4g}] accuracy)"
    ]
    assert judged(base, cand, confidence=0.975, maxAccuracyDrop={"relative": bound}).passed  # exactly at it


def test_f1_on_resamples_is_scikit_learns_macro_f1() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    labels, pred = rng.integers(0, 4, 60), rng.integers(0, 5, 60)  # class 4 is only ever predicted
    weights = np.vstack([np.ones(60), rng.multinomial(60, np.full(60, 1 / 60))])
    scores_ = gate._weighted_score("f1", pred, labels, weights)
    drawn = np.repeat(np.arange(60), weights[1].astype(int))
    expected = [f1_score(labels, pred, average="macro"), f1_score(labels[drawn], pred[drawn], average="macro")]
    assert scores_ == pytest.approx(expected, abs=1e-12)
    # a class left out of the resample does not count; one seen once (truth or prediction only) does
    labels, pred = np.array([0, 0, 1, 1, 2, 3]), np.array([0, 1, 1, 1, 4, 3])
    weights = np.array([[1.0, 1, 1, 1, 1, 0]])
    expected = f1_score(labels[:5], pred[:5], average="macro")
    assert gate._weighted_score("f1", pred, labels, weights) == pytest.approx([expected], abs=1e-12)


def test_f1_is_bounded_by_rescoring_each_resample() -> None:
    labels = np.array([0, 1, 2, 3] * 25)
    worse = labels.copy()
    worse[:8] = (worse[:8] + 1) % 4
    data = gate.Paired(labels.copy(), worse, labels)
    bound = gate.drop_upper_bound("f1", data, 0.95)
    point = 1.0 - gate._weighted_score("f1", worse, labels, np.ones((1, 100)))[0]
    assert point < bound < 0.2


def test_a_label_slice_past_its_budget_fails_naming_the_worst_slice() -> None:
    labels = [0] * 8 + [1] * 8 + [2] * 8
    base = [1.0] * 24
    cand = [1.0] * 8 + [0.0] * 2 + [1.0] * 6 + [0.0] * 4 + [1.0] * 4  # class 1 loses 0.25, class 2 loses 0.5
    result = judged(base, cand, labels, slices=[{"by": "label", "maxAccuracyDrop": 0.125}])
    assert result.slice_drops == {"label=0": 0.0, "label=1": 0.25, "label=2": 0.5}
    assert result.failed == [
        "maxAccuracyDrop: drop 0.25 > 0.125 (absolute)",
        "slices[0]: slice label=2: drop 0.5 > 0.125 (worst of 2 failing slices)",
    ]
    whole = {"maxAccuracyDrop": {"absolute": 1}}
    one = judged(base, cand, labels, slices=[{"by": "label", "maxAccuracyDrop": 0.25}], **whole)
    assert one.failed == ["slices[0]: slice label=2: drop 0.5 > 0.25"]
    assert judged(base, cand, labels, slices=[{"by": "label", "maxAccuracyDrop": 0.5}], **whole).passed  # at it
    two = judged(
        base,
        cand,
        labels,
        slices=[{"by": "label", "maxAccuracyDrop": 0.5}, {"by": "label", "maxAccuracyDrop": 0.25}],
        **whole,
    )
    assert two.failed == ["slices[1]: slice label=2: drop 0.5 > 0.25"]


def test_label_slices_with_confidence_judge_each_slices_bound() -> None:
    labels = [0] * 20 + [1] * 20
    base, cand = [1.0] * 40, [1.0] * 20 + [0.0] + [1.0] * 19  # class 1 loses one of 20
    result = judged(base, cand, labels, confidence=0.95, slices=[{"by": "label", "maxAccuracyDrop": 0.0625}])
    bound = gate.drop_upper_bound("accuracy", paired([1.0] * 20, [0.0] + [1.0] * 19), 0.95)
    assert result.slice_drops == {"label=0": 0.0, "label=1": bound} and bound > 0.0625
    assert result.failed == [f"slices[0]: slice label=1: drop {bound:.4g} > 0.0625"]


def test_slices_without_labelled_per_sample_results_fail_as_unmeasured() -> None:
    v = validation(slices=[{"by": "label", "maxAccuracyDrop": 0.1}])
    for data in (None, paired([1.0], [1.0])):
        result = gate.evaluate(v, ModelMetrics(score=1.0), ModelMetrics(score=1.0), data)
        assert result.failed == ["slices[0]: unmeasured (no per-sample results with labels)"]


@pytest.mark.parametrize(("metric", "labels"), [("accuracy", True), ("top5", True), ("cosine", False), ("mse", True)])
def test_per_sample_values_average_to_the_score(metric: str, labels: bool) -> None:
    """What the gate resamples is what the score averages, so the bound is a bound of the score's drop."""
    rng = np.random.default_rng(7)
    outputs, reference = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    y = (rng.integers(0, 6, 40) if metric != "mse" else rng.normal(size=(40, 6))) if labels else None
    values = measure.per_sample(metric, outputs, y, reference)
    assert values.shape == (40,)
    assert float(np.mean(values)) == pytest.approx(measure.score_outputs(metric, outputs, y, reference), abs=1e-12)


def test_per_sample_f1_values_are_the_predicted_classes() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert measure.per_sample("f1", outputs, np.array([1, 1, 0]), outputs).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="metric f1 needs labels"):
        measure.per_sample("f1", outputs, None, outputs)


@pytest.mark.parametrize("metric", ["f1", "mse", "cosine"])
def test_slices_need_a_per_sample_metric(metric: str) -> None:
    with pytest.raises(ValueError, match="validation.slices needs a per-sample metric: set metric to accuracy or top5"):
        validation(metric, slices=[{"by": "label", "maxAccuracyDrop": 0.1}])
    assert validation(metric, slices=[]).slices == []


@pytest.mark.parametrize("confidence", [0.49, 0.9991])
def test_confidence_outside_its_bounds_is_refused(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        validation(confidence=confidence)
