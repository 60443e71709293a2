"""Shadow agreement verdicts without Prometheus (``analysis.query`` answers from a table), the
Wilson bound against a hand calculation, and the metric names against the runtime's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelpress.api import Analysis, Shadow
from modelpress.jobs import shadow as runtime_shadow
from modelpress.operator import analysis
from modelpress.operator.analysis import (
    SHADOW_AGREEMENTS_METRIC,
    SHADOW_REQUESTS_METRIC,
    SHADOW_SAMPLES_METRIC,
    PrometheusError,
    ShadowJudge,
    ShadowMeasures,
    ShadowTarget,
    Target,
    judge_shadow,
    p95_query,
    requests_query,
    shadow_count_query,
    shadow_mean_query,
    wilson_upper_bound,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
URL = "http://prometheus:9090"
SCOPE = 'namespace="prod",model="digits"'
ST = ShadowTarget(shadow_digest="cand1d", scope=SCOPE, window="95s")


def shadow_table(
    samples: float | None, agreements: float | None = None, dropped: float | None = 0.0, failed: float | None = None
) -> dict[str, float | None]:
    return {
        shadow_count_query(ST, SHADOW_SAMPLES_METRIC): samples,
        shadow_count_query(ST, SHADOW_AGREEMENTS_METRIC): agreements,
        shadow_count_query(ST, SHADOW_REQUESTS_METRIC, 'outcome="dropped"'): dropped,
        shadow_count_query(ST, SHADOW_REQUESTS_METRIC, 'outcome="failed"'): failed,
    }


def test_metric_names_and_labels_are_the_runtimes() -> None:
    """Duplicated on purpose (the operator must not import the runtime); they must not drift."""
    assert analysis.SHADOW_REQUESTS_METRIC == runtime_shadow.REQUESTS._name + "_total"
    assert analysis.SHADOW_SAMPLES_METRIC == runtime_shadow.SAMPLES._name + "_total"
    assert analysis.SHADOW_AGREEMENTS_METRIC == runtime_shadow.AGREEMENTS._name + "_total"
    assert analysis.SHADOW_KL_METRIC == runtime_shadow.KL_DIVERGENCE._name
    assert analysis.SHADOW_COSINE_METRIC == runtime_shadow.COSINE._name
    assert analysis.SHADOW_ABS_ERROR_METRIC == runtime_shadow.ABS_ERROR._name
    assert analysis.SHADOW_RELATIVE_ERROR_METRIC == runtime_shadow.RELATIVE_ERROR._name
    assert analysis.SHADOW_DIGEST_LABEL in runtime_shadow.LABELS
    assert analysis.DIGEST_LABEL in runtime_shadow.LABELS


@pytest.mark.parametrize(
    "k, n, confidence, upper",
    [
        # By hand: p = .97, z = 1.644854 (z^2 = 2.705543), z^2/n = .0027055;
        # (p + z^2/2n + z*sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
        # = (.97 + .0013528 + 1.644854 * .0054568) / 1.0027055 = .980328 / 1.0027055 = .97768
        (970, 1000, 0.95, 0.97768),
        (985, 1000, 0.95, 0.99014),
        (99, 100, 0.90, 0.99700),
        (0, 10, 0.95, 0.21294),  # all disagree: still a bound above 0
        (10, 10, 0.95, 1.0),  # all agree: the bound is 1, never above
    ],
)
def test_wilson_upper_bound_matches_a_hand_calculation(k, n, confidence, upper) -> None:
    assert wilson_upper_bound(k, n, confidence) == pytest.approx(upper, abs=5e-6)


def judge(samples: float, agreements: float | None = None, **shadow) -> tuple[dict, list[str], list[str]]:
    spec = Shadow.model_validate({"minSamples": 1000, **shadow})
    c = judge_shadow(spec, "classification", ShadowMeasures(samples, agreements), "95s")
    return c.values, c.failed, c.unknown


def test_fewer_than_min_samples_is_inconclusive_never_a_pass_even_in_full_agreement() -> None:
    values, failed, unknown = judge(999, 999)
    assert not failed and unknown == ["too few shadow samples: 999 compared in 95s, minSamples is 1000"]
    assert values == {"shadowSamples": 999.0, "shadowDropped": 0.0}


@pytest.mark.parametrize(
    "agreements, outcome",
    [
        (983, "fail"),  # upper bound .98854 < .99
        (984, "fail"),  # upper bound .98934 < .99: significant although the point estimate is .984
        (985, "hold"),  # upper bound .99014 >= .99, point .985 < .99: not significant, more samples
        (989, "hold"),
        (990, "pass"),  # the point estimate exactly at the bound passes
        (1000, "pass"),
    ],
)
def test_agreement_verdicts_at_the_wilson_boundary(agreements, outcome) -> None:
    values, failed, unknown = judge(1000, agreements)
    assert values["shadowAgreement"] == agreements / 1000
    assert values["shadowAgreementUpperBound"] == round(wilson_upper_bound(agreements, 1000, 0.95), 6)
    assert (bool(failed), bool(unknown)) == {"fail": (True, False), "hold": (False, True), "pass": (False, False)}[
        outcome
    ]
    if failed:
        assert failed[0].startswith(f"shadow top-1 agreement {agreements / 1000:.4f} over 1000 samples (upper bound")
        assert failed[0].endswith("< minAgreement 0.99")
    if unknown:
        assert "not significantly; more samples decide" in unknown[0]


def test_agreements_extrapolated_above_the_samples_count_as_full_agreement() -> None:
    """Prometheus's increase() extrapolates each counter separately: 100.4 of 100.2 happens."""
    values, failed, unknown = judge(1000.2, 1000.4)
    assert (values["shadowAgreement"], values["shadowAgreementUpperBound"]) == (1.0, 1.0)
    assert not failed and not unknown
    assert wilson_upper_bound(10.5, 10, 0.95) == 1.0


def test_a_higher_confidence_needs_stronger_evidence_to_fail() -> None:
    assert judge(1000, 984)[1] and not judge(1000, 984, confidence=0.99)[1]


def test_means_are_point_estimates_against_their_bounds_once_min_samples_are_in() -> None:
    spec = Shadow.model_validate({"minSamples": 10, "minCosine": 0.95, "maxAbsError": 0.1})
    ok = judge_shadow(spec, "embedding", ShadowMeasures(10, means={"minCosine": 0.95, "maxAbsError": 0.1}), "1m")
    assert not ok.failed and not ok.unknown and ok.values["shadowCosine"] == 0.95
    bad = judge_shadow(spec, "embedding", ShadowMeasures(10, means={"minCosine": 0.9499, "maxAbsError": 0.11}), "1m")
    assert bad.failed == [
        "shadow mean Cosine 0.9499 < minCosine 0.95 over 10 samples",
        "shadow mean AbsError 0.11 > maxAbsError 0.1 over 10 samples",
    ]
    missing = judge_shadow(spec, "embedding", ShadowMeasures(10, means={"minCosine": 0.99}), "1m")
    assert missing.unknown == ["shadowAbsError: no shadow data"] and not missing.failed


def test_analyse_shadow_queries_prometheus_and_fails_with_the_numbers(prometheus) -> None:
    prometheus(shadow_table(samples=1000.0, agreements=600.0, dropped=3.0, failed=1.0))
    judge_ = ShadowJudge(Shadow(minSamples=500), "classification", ST)
    result = analysis.analyse_shadow(judge_, URL, now=NOW)
    assert result.verdict == "Fail"
    assert result.values == {
        "shadowSamples": 1000.0,
        "shadowDropped": 3.0,
        "shadowFailed": 1.0,
        "shadowAgreement": 0.6,
        "shadowAgreementUpperBound": round(wilson_upper_bound(600, 1000, 0.95), 6),
    }
    assert "shadow top-1 agreement 0.6000 over 1000 samples" in result.message


def test_analyse_shadow_with_the_kl_bound_asks_for_the_mean(prometheus) -> None:
    answers = shadow_table(samples=600.0, agreements=600.0)
    answers[shadow_mean_query(ST, analysis.SHADOW_KL_METRIC)] = 0.002
    prometheus(answers)
    judge_ = ShadowJudge(Shadow(minSamples=500, minAgreement=0.99, maxKlDivergence=0.01), "classification", ST)
    result = analysis.analyse_shadow(judge_, URL, now=NOW)
    assert (result.verdict, result.values["shadowKlDivergence"]) == ("Pass", 0.002)
    assert result.message == "shadow checks passed: 600 samples, agreement 1.0000, KlDivergence 0.002"


def test_no_shadow_series_at_all_is_inconclusive_and_says_what_to_check(prometheus) -> None:
    prometheus(shadow_table(samples=None, dropped=None))
    result = analysis.analyse_shadow(ShadowJudge(Shadow(), "classification", ST), URL, now=NOW)
    assert result.verdict == "Inconclusive" and result.message.startswith("too few shadow samples: 0 compared in 95s")
    assert f"no series match {SHADOW_SAMPLES_METRIC}{ST.selector()}" in result.message


def test_a_prometheus_error_in_shadow_is_inconclusive(prometheus) -> None:
    prometheus({shadow_count_query(ST, SHADOW_SAMPLES_METRIC): PrometheusError("Prometheus is unreachable")})
    result = analysis.analyse_shadow(ShadowJudge(Shadow(), "classification", ST), URL, now=NOW)
    assert (result.verdict, result.message) == ("Inconclusive", "Prometheus is unreachable")


def test_the_canary_analysis_appends_the_shadow_checks(prometheus) -> None:
    """duringCanary: a canary with fine error rate and latency still fails on agreement."""
    target = Target(canary_digest="cand1d", scope=SCOPE, window="5m")
    prometheus(
        {
            requests_query(target): 200.0,
            requests_query(target, errors=True): 0.0,
            p95_query(target, canary=True): 0.1,
            p95_query(target, canary=False): 0.1,
            **shadow_table(samples=1000.0, agreements=900.0),
        }
    )
    judge_ = ShadowJudge(Shadow(minSamples=500), "classification", ST)
    result = analysis.analyse(Analysis(), URL, target, now=NOW, shadow=judge_)
    assert result.verdict == "Fail" and result.message.startswith("shadow top-1 agreement 0.9000")
    assert result.values["canaryRequests"] == 200.0 and result.values["shadowAgreement"] == 0.9


def test_the_wilson_bound_of_full_agreement_is_exactly_one_whatever_the_rounding() -> None:
    """The formula lands on 1.0000000000000002 (3 of 3 at 0.90) or 0.9999999999999999 (1000 of
    1000 at 0.95) by rounding: the bound is clamped to 1 and never below the point estimate."""
    assert [wilson_upper_bound(n, n, c) for n, c in ((3, 0.9), (10, 0.9), (1000, 0.95), (12, 0.9))] == [1.0] * 4
    assert wilson_upper_bound(20, 10, 0.95) == 1.0  # more successes than trials count as all (p = 2 has no sqrt)


def test_full_agreement_passes_min_agreement_one() -> None:
    """The upper bound equal to minAgreement is no failure (``upper < bound``), and 1000 of
    1000 agreeing reaches minAgreement 1 exactly."""
    values, failed, unknown = judge(1000, 1000, minAgreement=1.0)
    assert (values["shadowAgreement"], values["shadowAgreementUpperBound"], failed, unknown) == (1.0, 1.0, [], [])


def test_agreement_without_data_is_inconclusive_once_min_samples_are_in() -> None:
    values, failed, unknown = judge(1000, None)
    assert (failed, unknown) == ([], ["shadow top-1 agreement: no data"])
    assert values == {"shadowSamples": 1000, "shadowDropped": 0.0}


def test_values_are_rounded_counts_to_3_digits_and_ratios_to_6() -> None:
    """increase() extrapolates, so the counts come fractional; status keeps them short."""
    spec = Shadow.model_validate({"minSamples": 1000})
    c = judge_shadow(spec, "classification", ShadowMeasures(1000.71234, 991.3, dropped=2.34567, failed=1.23456), "95s")
    assert (c.failed, c.unknown) == ([], [])
    assert c.values == {
        "shadowSamples": 1000.712,
        "shadowDropped": 2.346,
        "shadowFailed": 1.235,
        "shadowAgreement": 0.990594,  # 991.3 / 1000.71234 = 0.99059439...
        "shadowAgreementUpperBound": 0.994455,  # 0.99445544...
    }
    kl = Shadow.model_validate({"minSamples": 10, "maxKlDivergence": 0.01})
    c = judge_shadow(kl, "classification", ShadowMeasures(10, means={"maxKlDivergence": 0.00123456789}), "1m")
    assert c.values == {"shadowSamples": 10, "shadowDropped": 0.0, "shadowKlDivergence": 0.001235}
