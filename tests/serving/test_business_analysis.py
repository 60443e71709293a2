"""Business-metric verdicts (``rollout.analysis.business``): the tests against hand
calculations and scipy, the holding rules, the wiring into ``analyse`` (``analysis.query``
answers from a table, as in test_shadow_analysis.py), and one run on real parts: two
modelpress-onnx ModelServers taking predictions and feedback, scraped by a real Prometheus."""

from __future__ import annotations

import hashlib
import http.client
import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from modelpress.api import Analysis, Business
from modelpress.jobs import feedback as runtime_feedback
from modelpress.jobs import serving
from modelpress.operator import analysis
from modelpress.operator.analysis import (
    FEEDBACK_METRIC,
    FEEDBACK_SQUARES_METRIC,
    FEEDBACK_SUM_METRIC,
    FeedbackArm,
    PrometheusError,
    Target,
    feedback_query,
    judge_business,
    mean_drop_test,
    p95_query,
    rate_drop_test,
    requests_query,
    student_t_cdf,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
URL = "http://prometheus:9090"
TARGET = Target(canary_digest="cand1d", scope='namespace="prod",model="recs"', window="5m")
RATE = Business(name="ctr", kind="rate", minSamples=1000, maxRelativeDrop=0.05, confidence=0.95)
MEAN = Business(name="revenue", kind="mean", minSamples=50, maxRelativeDrop=0.05, confidence=0.95)


def arm_with(n: int, mean: float, variance: float) -> FeedbackArm:
    """The counters' view of n outcomes with this mean and sample variance."""
    return FeedbackArm(n, n * mean, variance * (n - 1) + n * mean * mean)


def test_metric_names_and_labels_are_the_runtimes() -> None:
    """Duplicated on purpose (the operator must not import the runtime); they must not drift."""
    assert analysis.FEEDBACK_METRIC == runtime_feedback.FEEDBACK._name + "_total"
    assert analysis.FEEDBACK_SUM_METRIC == runtime_feedback.OUTCOME._name + "_sum"
    assert analysis.FEEDBACK_SQUARES_METRIC == runtime_feedback.OUTCOME_SQUARES._name + "_sum"
    assert runtime_feedback.FEEDBACK._labelnames == ("model", analysis.DIGEST_LABEL, "kind")
    assert runtime_feedback.OUTCOME._labelnames == runtime_feedback.OUTCOME_SQUARES._labelnames
    assert analysis.DIGEST_LABEL in runtime_feedback.OUTCOME._labelnames


# --------------------------------------------------------------------------- the tests themselves


def test_rate_test_matches_a_hand_calculation() -> None:
    """80 of 1000 clicks against 100 of 1000, 5% drop tolerated. Agresti-Caffo: p_c = 81/1002 =
    0.080838, p_s = 101/1002 = 0.100798; difference 0.080838 - 0.95 x 0.100798 = -0.014920;
    variance 0.080838 x 0.919162 / 1002 + 0.9025 x 0.100798 x 0.899202 / 1002 = 1.5579e-4;
    z = -0.014920 / 0.012482 = -1.1954, p = Phi(z) = 0.1160."""
    z, p = rate_drop_test(FeedbackArm(1000, 80), FeedbackArm(1000, 100), 0.05)
    assert z == pytest.approx(-1.1954, abs=1e-4)
    assert p == pytest.approx(0.1160, abs=1e-4)


def test_rate_test_at_zero_and_full_rates_stays_finite() -> None:
    """No clicks at all in either arm: the adjusted variance is still positive, no verdict to draw."""
    z, p = rate_drop_test(FeedbackArm(1000, 0), FeedbackArm(1000, 0), 0.05)
    assert math.isfinite(z) and 0.4 < p < 0.6
    z, p = rate_drop_test(FeedbackArm(1000, 0), FeedbackArm(1000, 1000), 0.05)
    assert p < 1e-100


def test_mean_test_is_welchs_against_the_scaled_stable_arm() -> None:
    """H0 mu_c >= 0.95 mu_s is Welch's test of the canary against the stable outcomes scaled
    by 0.95 (mean 9.5, sd 1.9): scipy's one-sided Welch test from the same summary numbers."""
    t, df, p = mean_drop_test(arm_with(50, 9.0, 4.0), arm_with(50, 10.0, 4.0), 0.05)
    reference = stats.ttest_ind_from_stats(9.0, 2.0, 50, 9.5, 1.9, 50, equal_var=False, alternative="less")
    # a = 4/50 = 0.08, b = 0.9025 x 4/50 = 0.0722: t = -0.5 / sqrt(0.1522) = -1.2816,
    # df = 0.1522^2 / ((0.08^2 + 0.0722^2) / 49) = 97.74
    assert t == pytest.approx(-1.2816, abs=1e-4) and df == pytest.approx(97.74, abs=0.01)
    assert (t, p) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-9)


def test_mean_test_with_a_negative_stable_mean_tolerates_the_drop_below_it() -> None:
    """At stable -10, "5% worse" is -10.5: the null is mu_c >= -10.5, so a canary at -10 is fine."""
    t, _, p = mean_drop_test(arm_with(100, -10.0, 1.0), arm_with(100, -10.0, 1.0), 0.05)
    assert t > 0 and p > 0.99


def test_mean_test_without_variance_is_exact() -> None:
    assert mean_drop_test(arm_with(10, 5.0, 0.0), arm_with(10, 10.0, 0.0), 0.05)[2] == 0.0
    assert mean_drop_test(arm_with(10, 10.0, 0.0), arm_with(10, 10.0, 0.0), 0.05)[2] == 1.0


@pytest.mark.parametrize("df", [1.0, 2.5, 7.0, 30.0, 97.74, 1_000.0, 1e5, 1e7])
@pytest.mark.parametrize("t", [-12.0, -3.0, -1.645, -0.2, 0.0, 1.0, 2.5])
def test_student_t_cdf_matches_scipy(t: float, df: float) -> None:
    assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-7, abs=1e-15)


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(("canary_n", "stable_n"), [(999, 5000), (5000, 999), (0, 0)])
def test_fewer_than_min_samples_in_either_arm_is_waiting_never_a_verdict(canary_n: int, stable_n: int) -> None:
    """Even a canary with no clicks at all holds while an arm is short of minSamples."""
    c = judge_business(RATE, FeedbackArm(canary_n, 0), FeedbackArm(stable_n, stable_n * 0.1), "5m")
    assert not c.failed and len(c.unknown) == 1
    assert c.unknown[0].startswith(f"ctr: waiting for feedback: {canary_n} canary and {stable_n} stable outcomes")
    assert "minSamples is 1000 per arm" in c.unknown[0]
    assert c.values == {"businessCanaryFeedback": canary_n, "businessStableFeedback": stable_n}


def test_exactly_min_samples_is_judged() -> None:
    c = judge_business(RATE, FeedbackArm(1000, 100), FeedbackArm(1000, 100), "5m")
    assert not c.failed and not c.unknown and c.values["businessP"] > 0.5


def test_a_significant_rate_drop_fails_with_the_numbers() -> None:
    """8.5% against 10% over 20000 outcomes each: z -3.545, p 0.000196."""
    c = judge_business(RATE, FeedbackArm(20000, 1700), FeedbackArm(20000, 2000), "5m")
    assert c.failed == [
        "ctr: canary rate 0.085 vs stable 0.1 (-15.00%) over 20000 / 20000 outcomes in 5m: significantly more "
        "than 5.0% below stable (two-proportion z -3.54, p 0.0002 < 0.05)"
    ]
    assert c.values == {
        "businessCanaryFeedback": 20000, "businessStableFeedback": 20000, "businessCanaryRate": 0.085,
        "businessStableRate": 0.1, "businessZ": -3.5449, "businessP": 0.000196, "businessRelativeChange": -0.15,
    }  # fmt: skip


def test_a_drop_that_is_not_significant_holds_for_more_feedback() -> None:
    c = judge_business(RATE, FeedbackArm(1000, 80), FeedbackArm(1000, 100), "5m")
    assert not c.failed
    assert c.unknown == [
        "ctr: canary rate 0.08 vs stable 0.1 (-20.00%) over 1000 / 1000 outcomes in 5m: more than 5.0% below "
        "stable but not significantly (two-proportion z -1.20, p 0.12); more feedback decides"
    ]


def test_a_canary_exactly_at_the_tolerated_drop_passes() -> None:
    """Half of stable's 20% at maxRelativeDrop 0.5 is the boundary of H0 itself: no failure, no hold."""
    business = RATE.model_copy(update={"max_relative_drop": 0.5})
    c = judge_business(business, FeedbackArm(1000, 100), FeedbackArm(1000, 200), "5m")
    assert not c.failed and not c.unknown and c.values["businessRelativeChange"] == -0.5


def test_a_higher_confidence_needs_stronger_evidence_to_fail() -> None:
    """z -1.95 (p 0.025) fails at 0.95 and holds at 0.99."""
    canary, stable = FeedbackArm(5000, 420), FeedbackArm(5000, 500)
    assert judge_business(RATE, canary, stable, "5m").failed
    strict = judge_business(RATE.model_copy(update={"confidence": 0.99}), canary, stable, "5m")
    assert not strict.failed and strict.unknown


def test_extrapolated_counts_keep_the_rate_inside_zero_and_one() -> None:
    c = judge_business(RATE, FeedbackArm(1000, 1000.4), FeedbackArm(1000, 999.0), "5m")
    assert c.values["businessCanaryRate"] == 1.0 and not c.failed


def test_a_significant_mean_drop_fails_with_welchs_numbers() -> None:
    """a = 4/400 = 0.01, b = 0.9025 x 9/400 = 0.020306: t = (9 - 9.5) / sqrt(0.030306) = -2.872,
    df = 0.030306^2 / ((0.01^2 + 0.020306^2) / 399) = 715.3."""
    c = judge_business(MEAN, arm_with(400, 9.0, 4.0), arm_with(400, 10.0, 9.0), "1h")
    assert c.failed == [
        "revenue: canary mean 9 vs stable 10 (-10.00%) over 400 / 400 outcomes in 1h: significantly more than 5.0% "
        "below stable (Welch t -2.87, df 715, p 0.0021 < 0.05)"
    ]
    assert c.values["businessCanaryStd"] == 2.0 and c.values["businessStableStd"] == 3.0
    assert c.values["businessT"] == pytest.approx(-2.872, abs=1e-3)


def test_a_mean_within_the_tolerance_passes() -> None:
    c = judge_business(MEAN, arm_with(50, 9.8, 4.0), arm_with(50, 10.0, 4.0), "1h")
    assert not c.failed and not c.unknown and c.values["businessP"] > 0.5


def test_business_spec_bounds() -> None:
    Business(kind="mean", minSamples=2, maxRelativeDrop=0.0)
    for bad in ({"kind": "median"}, {"kind": "rate", "minSamples": 1}, {"kind": "rate", "maxRelativeDrop": 1.0}, {}):
        with pytest.raises(ValidationError):
            Business.model_validate(bad)


# --------------------------------------------------------------------------- wiring into analyse


def healthy(target: Target = TARGET) -> dict[str, float | None | Exception]:
    return {
        requests_query(target): 5000.0,
        requests_query(target, errors=True): 0.0,
        p95_query(target, canary=True): 0.01,
        p95_query(target, canary=False): 0.01,
    }


def feedback(t: Target, kind: str, counts: tuple[float | None, float | None], **sums: float) -> dict:
    answers: dict[str, float | None] = {
        feedback_query(t, FEEDBACK_METRIC, True, kind): counts[0],
        feedback_query(t, FEEDBACK_METRIC, False, kind): counts[1],
    }
    for name, value in sums.items():
        metric = FEEDBACK_SUM_METRIC if name.endswith("sum") else FEEDBACK_SQUARES_METRIC
        answers[feedback_query(t, metric, name.startswith("canary"))] = value
    return answers


def test_queries_pin_each_arm_by_digest_and_the_feedback_kind() -> None:
    assert feedback_query(TARGET, FEEDBACK_METRIC, True, "binary") == (
        'sum(increase(modelpress_feedback_total{namespace="prod",model="recs",artifact_digest="cand1d",'
        'kind="binary"}[5m]))'
    )
    assert feedback_query(TARGET, FEEDBACK_SUM_METRIC, False) == (
        'sum(increase(modelpress_feedback_outcome_sum{namespace="prod",model="recs",artifact_digest!="cand1d"}[5m]))'
    )


def test_analyse_fails_a_canary_with_fine_errors_and_latency_on_its_click_through(prometheus) -> None:
    prometheus({**healthy(), **feedback(TARGET, "binary", (20000.0, 60000.0), canary_sum=1700.0, stable_sum=6000.0)})
    result = analysis.analyse(Analysis(business=RATE), URL, TARGET, now=NOW)
    assert result.verdict == "Fail" and result.message.startswith("ctr: canary rate 0.085 vs stable 0.1")
    assert result.values["canaryRequests"] == 5000.0 and result.values["businessStableRate"] == 0.1


def test_analyse_holds_while_feedback_is_short_and_asks_only_for_the_counts(prometheus) -> None:
    prometheus({**healthy(), **feedback(TARGET, "binary", (300.0, 2000.0))})
    result = analysis.analyse(Analysis(business=RATE), URL, TARGET, now=NOW)
    assert result.verdict == "Inconclusive" and result.message.startswith("ctr: waiting for feedback: 300 canary")


def test_analyse_without_any_feedback_series_says_what_to_check(prometheus) -> None:
    prometheus({**healthy(), **feedback(TARGET, "binary", (None, None))})
    result = analysis.analyse(Analysis(business=RATE), URL, TARGET, now=NOW)
    assert result.verdict == "Inconclusive" and "does the application post feedback" in result.message
    assert result.values["businessCanaryFeedback"] == 0.0


def test_analyse_counts_feedback_over_the_business_window_and_passes_a_good_mean(prometheus) -> None:
    """The rollout passes the stage so far: delayed feedback accumulates while a step holds."""
    stage = Target(TARGET.canary_digest, TARGET.scope, "1800s")
    canary, stable = arm_with(400, 10.1, 4.0), arm_with(900, 10.0, 4.0)
    prometheus({
        **healthy(),
        **feedback(stage, "numeric", (canary.n, stable.n), canary_sum=canary.total, stable_sum=stable.total,
                   canary_squares=canary.squares, stable_squares=stable.squares),
    })  # fmt: skip
    result = analysis.analyse(Analysis(business=MEAN), URL, TARGET, now=NOW, business_window="1800s")
    assert result.verdict == "Pass", result.message
    assert result.values["businessCanaryMean"] == 10.1 and result.values["businessStableFeedback"] == 900


def test_a_prometheus_error_in_the_business_check_is_inconclusive(prometheus) -> None:
    answers = {**healthy(), **feedback(TARGET, "binary", (None, None))}
    answers[feedback_query(TARGET, FEEDBACK_METRIC, True, "binary")] = PrometheusError("Prometheus is unreachable")
    prometheus(answers)
    result = analysis.analyse(Analysis(business=RATE), URL, TARGET, now=NOW)
    assert (result.verdict, result.message) == ("Inconclusive", "Prometheus is unreachable")


# --------------------------------------------------------------------------- real runtime and Prometheus


def predictions(server, x: np.ndarray, n: int) -> list[str]:
    """n V1 predictions; the prediction ids the runtime answered them with."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    ids = []
    for i in range(n):
        body = json.dumps({"instances": x[i % len(x) : i % len(x) + 1].tolist()})
        conn.request("POST", f"/v1/models/{server.name}:predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        ids.append(response.getheader(runtime_feedback.PREDICTION_ID_HEADER))
    conn.close()
    return ids


def clicks(server, ids: list[str], clicked: int) -> None:
    """Binary feedback for ``ids``: the first ``clicked`` were clicked."""
    items = [{"predictionId": pid, "outcome": i < clicked} for i, pid in enumerate(ids)]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", f"/v1/models/{server.name}/feedback", json.dumps(items), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"attributed": len(ids), "unattributed": 0})
    conn.close()


def test_a_canary_losing_clicks_fails_on_real_feedback_counters(digits_models, start_server, start_prometheus):
    """Stable 90 clicks of 300 (30%), canary 30 of 300 (10%): the click-through check fails the
    canary on what Prometheus scraped; with minSamples above what arrived it holds instead."""
    x = np.load(digits_models["val"])["x"]
    stable, canary = start_server(digits_models["fp32"]), start_server(digits_models["int8"])
    prom = start_prometheus([stable, canary])  # scrapes the zeroed counters before any feedback
    clicks(stable, predictions(stable, x, 300), 90)
    clicks(canary, predictions(canary, x, 300), 30)
    prom.wait_until(f"sum({FEEDBACK_METRIC}{{kind='binary'}}) >= 600 and sum({FEEDBACK_SUM_METRIC}) >= 120")
    canary_digest = hashlib.sha256(serving.find_model_file(digits_models["int8"]).read_bytes()).hexdigest()
    target = Target(canary_digest, 'model="digits"', "60s")
    spec = {"minRequests": 10, "maxLatencyRatio": 1000, "business": {"name": "ctr", "kind": "rate", "minSamples": 200}}

    result = analysis.analyse(Analysis.model_validate(spec), prom.url, target)
    assert result.verdict == "Fail" and result.message.startswith("ctr: canary rate 0.1"), result.message
    assert "significantly more than 5.0% below stable (two-proportion z" in result.message
    # increase() extrapolates each counter on its own, towards the window's end by up to a scrape
    # interval: over the few seconds these series exist, the counts come out above what was posted.
    assert 270 <= result.values["businessCanaryFeedback"] <= 600
    assert result.values["businessCanaryRate"] == pytest.approx(0.1, abs=0.01)
    assert result.values["businessStableRate"] == pytest.approx(0.3, abs=0.01)
    assert result.values["businessP"] < 1e-6

    spec["business"]["minSamples"] = 5000
    held = analysis.analyse(Analysis.model_validate(spec), prom.url, target)
    assert held.verdict == "Inconclusive" and held.message.startswith("ctr: waiting for feedback"), held.message
