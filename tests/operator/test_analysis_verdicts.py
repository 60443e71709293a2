"""Canary analysis verdicts without Prometheus: ``analysis.query`` answers from a table of PromQL -> value.

The live tests (tests/serving/test_canary_live.py) prove the queries against a real
Prometheus; these pin the verdict logic: every verdict, each limit exactly met and just
broken, empty series, a stable p95 of 0 and the minRequests boundary.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from modelpress.api import Analysis, AnalysisResult, PromQuery
from modelpress.operator import analysis
from modelpress.operator.analysis import PrometheusError, Target, p95_query, requests_query

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TARGET = Target(canary_digest="c0ffee", scope='namespace="prod",model="digits"', window="5m")
URL = "http://prometheus:9090"


def table(
    requests: float | None = 200.0,
    errors: float | None = 0.0,
    canary_p95: float | None = 0.1,
    stable_p95: float | None = 0.1,
    stable_requests: float | None = 1000.0,
    stable_errors: float | None = 0.0,
    **extra: float | None,
) -> dict[str, float | None]:
    """PromQL -> what Prometheus answers (None: an empty result)."""
    return {
        requests_query(TARGET): requests,
        requests_query(TARGET, errors=True): errors,
        requests_query(TARGET, canary=False): stable_requests,
        requests_query(TARGET, canary=False, errors=True): stable_errors,
        p95_query(TARGET, canary=True): canary_p95,
        p95_query(TARGET, canary=False): stable_p95,
        **extra,
    }


@pytest.fixture()
def prometheus(monkeypatch: pytest.MonkeyPatch):
    """Install a table as Prometheus; returns the list of queries asked, in order."""
    asked: list[str] = []

    def install(answers: dict[str, float | None | Exception]) -> list[str]:
        def query(url: str, promql: str, timeout: float = 5.0) -> float | None:
            assert (url, timeout) == (URL, 5.0)
            asked.append(promql)
            answer = answers[promql]  # an unexpected query is a KeyError: the test fails
            if isinstance(answer, Exception):
                raise answer
            return answer

        monkeypatch.setattr(analysis, "query", query)
        return asked

    return install


def verdict(spec: Analysis | None = None) -> AnalysisResult:
    return analysis.analyse(spec or Analysis(), URL, TARGET, now=NOW)


def test_pass_reports_every_measured_value_rounded(prometheus) -> None:
    prometheus(table(requests=200.12345, errors=2.0, canary_p95=0.123456789, stable_p95=0.08765432))
    result = verdict(Analysis(maxErrorRate=0.05, maxLatencyRatio=2.0))
    assert result == AnalysisResult(
        time="2026-01-01T12:00:00+00:00",
        verdict="Pass",
        message="all checks passed",
        values={
            "canaryRequests": 200.123,
            "canaryErrorRate": 0.009994,
            "canaryP95Ms": 123.4568,
            "stableP95Ms": 87.6543,
            "latencyRatio": 1.4085,
        },
    )


def test_every_limit_exactly_met_passes(prometheus) -> None:
    spec = Analysis(
        minRequests=50,
        maxErrorRate=0.01,
        maxLatencyRatio=1.5,
        queries=[PromQuery(name="q_max", query="q", max=7.0), PromQuery(name="r_min", query="r", min=3.0)],
    )
    prometheus(table(requests=50.0, errors=0.5, canary_p95=0.375, stable_p95=0.25, q=7.0, r=3.0))
    result = verdict(spec)
    assert (result.verdict, result.message) == ("Pass", "all checks passed")
    assert result.values == {
        "canaryRequests": 50.0,
        "canaryErrorRate": 0.01,
        "canaryP95Ms": 375.0,
        "stableP95Ms": 250.0,
        "latencyRatio": 1.5,
        "q_max": 7.0,
        "r_min": 3.0,
    }


@pytest.mark.parametrize(
    ("answers", "spec", "message"),
    [
        (
            table(errors=3.0),
            Analysis(maxErrorRate=0.01),
            "error rate 0.0150 > maxErrorRate 0.01 (stable 0.0000; z 3.88, p 5.3e-05)",
        ),
        (
            table(canary_p95=0.3, stable_p95=0.2),
            Analysis(maxLatencyRatio=1.25),
            "p95 latency ratio 1.50 (canary 300.00 ms / stable 200.00 ms) > maxLatencyRatio 1.25",
        ),
        (
            table(q=7.5),
            Analysis(queries=[PromQuery(name="q", query="q", max=7.0)]),
            "query q = 7.5 > max 7",
        ),
        (
            table(q=2.5),
            Analysis(queries=[PromQuery(name="q", query="q", min=3.0)]),
            "query q = 2.5 < min 3",
        ),
    ],
    ids=["error-rate", "latency-ratio", "query-max", "query-min"],
)
def test_each_limit_just_broken_fails_naming_the_measured_value(prometheus, answers, spec, message) -> None:
    prometheus(answers)
    result = verdict(spec)
    assert (result.verdict, result.message) == ("Fail", message)


def test_a_query_below_min_and_above_max_at_once_names_both(prometheus) -> None:
    prometheus(table(q=5.0))
    result = verdict(Analysis(queries=[PromQuery(name="q", query="q", min=6.0, max=4.0)]))
    assert (result.verdict, result.message) == ("Fail", "query q = 5 > max 4; query q = 5 < min 6")


def test_every_broken_check_is_named_and_a_failure_beats_missing_data(prometheus) -> None:
    prometheus(table(errors=20.0, canary_p95=0.4, stable_p95=0.1, q=None))
    spec = Analysis(queries=[PromQuery(name="q", query="q", max=1.0)])
    result = verdict(spec)
    assert result.verdict == "Fail"
    assert result.message == (
        "error rate 0.1000 > maxErrorRate 0.01 (stable 0.0000; z 10.08, p 3.2e-24); "
        "p95 latency ratio 4.00 (canary 400.00 ms / stable 100.00 ms) > maxLatencyRatio 1.2"
    )
    assert "q" not in result.values


@pytest.mark.parametrize("requests", [49.0, 0.0])
def test_fewer_than_min_requests_is_inconclusive_not_a_pass(prometheus, requests) -> None:
    asked = prometheus(table(requests=requests))
    result = verdict(Analysis(minRequests=50))
    assert result.verdict == "Inconclusive"
    assert result.message == f"too little traffic to judge: {requests:.0f} canary requests in 5m, minRequests is 50"
    assert result.values == {"canaryRequests": requests}
    assert asked == [requests_query(TARGET)]  # nothing else is worth asking


def test_min_requests_exactly_met_is_judged(prometheus) -> None:
    prometheus(table(requests=50.0))
    assert verdict(Analysis(minRequests=50)).verdict == "Pass"


def test_no_request_series_at_all_is_inconclusive_and_says_what_to_check(prometheus) -> None:
    prometheus(table(requests=None))
    result = verdict(Analysis(minRequests=1))  # not even a zero: counted as 0, which is < 1
    assert result.verdict == "Inconclusive"
    assert result.values == {"canaryRequests": 0.0}
    assert result.message.startswith("too little traffic to judge: 0 canary requests in 5m, minRequests is 1; ")
    assert f"no series match {analysis.REQUESTS_METRIC}{TARGET.selector(True)}" in result.message


def test_no_error_series_counts_as_zero_errors(prometheus) -> None:
    prometheus(table(errors=None))
    result = verdict()
    assert (result.verdict, result.values["canaryErrorRate"]) == ("Pass", 0.0)


@pytest.mark.parametrize(
    ("canary_p95", "stable_p95", "which"),
    [(None, 0.1, "canary"), (0.1, None, "stable"), (0.1, 0.0, "stable"), (0.0, 0.0, "stable"), (None, None, "canary")],
)
def test_missing_latency_or_a_stable_p95_of_zero_is_inconclusive(prometheus, canary_p95, stable_p95, which) -> None:
    prometheus(table(canary_p95=canary_p95, stable_p95=stable_p95))
    result = verdict()
    assert (result.verdict, result.message) == ("Inconclusive", f"p95 latency: no latency data for {which}")
    assert set(result.values) == {"canaryRequests", "canaryErrorRate"}


def test_a_canary_p95_of_zero_against_a_real_stable_passes(prometheus) -> None:
    prometheus(table(canary_p95=0.0, stable_p95=0.1))
    result = verdict()
    assert (result.verdict, result.values["latencyRatio"]) == ("Pass", 0.0)


def test_an_empty_extra_query_is_inconclusive_and_the_others_still_run(prometheus) -> None:
    prometheus(table(a=None, b=0.5))
    spec = Analysis(queries=[PromQuery(name="a", query="a", max=1.0), PromQuery(name="b", query="b", max=1.0)])
    result = verdict(spec)
    assert (result.verdict, result.message) == ("Inconclusive", "query a: empty result")
    assert result.values["b"] == 0.5 and "a" not in result.values


def test_missing_data_everywhere_names_each_gap(prometheus) -> None:
    prometheus(table(canary_p95=None, a=None))
    result = verdict(Analysis(queries=[PromQuery(name="a", query="a", min=1.0)]))
    assert result.message == "p95 latency: no latency data for canary; query a: empty result"


def test_a_prometheus_error_is_inconclusive_with_the_values_measured_so_far(prometheus) -> None:
    prometheus(table(canary_p95=PrometheusError("query failed: HTTP 422 bad_data")))
    result = verdict()
    assert result == AnalysisResult(
        time=NOW.isoformat(),
        verdict="Inconclusive",
        message="query failed: HTTP 422 bad_data",
        values={"canaryRequests": 200.0, "canaryErrorRate": 0.0},
    )


def test_without_a_time_the_verdict_is_stamped_now(prometheus) -> None:
    prometheus(table())
    before = datetime.now(UTC)
    result = analysis.analyse(Analysis(), URL, TARGET)
    assert before <= datetime.fromisoformat(result.time) <= datetime.now(UTC)


# --------------------------------------------------------------------------- error rate vs stable


@pytest.mark.parametrize(
    ("counts", "z"),
    [
        ((3, 200, 0, 1000), 3.8778),  # pooled 3/1200: sqrt(0.0025 * 0.9975 * (1/200 + 1/1000)) = 0.003868
        ((10, 1000, 10, 1000), 0.0),  # the same rate: no evidence either way
        ((0, 100, 0, 100), 0.0),  # no errors anywhere: no variance, no difference
        ((100, 100, 50, 50), 0.0),  # nothing but errors anywhere
        ((0, 200, 3, 1000), -0.7756),  # the canary errs less: -0.003 / 0.003868
    ],
)
def test_the_two_proportion_z_test(counts, z) -> None:
    got_z, p = analysis.error_rate_test(*counts)
    assert got_z == pytest.approx(z, abs=1e-4)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), abs=1e-5)


def test_an_error_rate_significantly_above_the_stable_models_fails_with_the_numbers(prometheus) -> None:
    prometheus(table(requests=200.0, errors=3.0, stable_requests=1000.0, stable_errors=0.0))
    result = verdict()
    z, p = analysis.error_rate_test(3, 200, 0, 1000)
    assert result.verdict == "Fail"
    assert result.message == f"error rate 0.0150 > maxErrorRate 0.01 (stable 0.0000; z {z:.2f}, p {p:.2g})"
    assert result.values == {
        "canaryRequests": 200.0,
        "canaryErrorRate": 0.015,
        "canaryErrors": 3.0,
        "stableRequests": 1000.0,
        "stableErrors": 0.0,
        "stableErrorRate": 0.0,
        "errorRateZ": round(z, 4),
        "errorRateP": round(p, 6),
        "canaryP95Ms": 100.0,
        "stableP95Ms": 100.0,
        "latencyRatio": 1.0,
    }


def test_one_error_in_fifty_is_no_evidence_when_the_stable_model_errs_too(prometheus) -> None:
    """The raw ratio (2% > 1%) failed this canary; against stable's 1% the test cannot tell them apart."""
    prometheus(table(requests=50.0, errors=1.0, stable_requests=1000.0, stable_errors=10.0))
    result = verdict()
    z, p = analysis.error_rate_test(1, 50, 10, 1000)
    assert result.verdict == "Inconclusive" and p > 0.05
    assert result.message == (
        f"error rate 0.0200 > maxErrorRate 0.01 (stable 0.0100; z {z:.2f}, p {p:.2g}): "
        "not significantly above the stable model at significance 0.05"
    )
    assert (result.values["errorRateP"], result.values["stableErrorRate"]) == (round(p, 6), 0.01)


def test_the_p_value_exactly_at_the_significance_is_not_significant(prometheus) -> None:
    prometheus(table(requests=200.0, errors=6.0, stable_requests=1000.0, stable_errors=10.0))
    _, p = analysis.error_rate_test(6, 200, 10, 1000)
    assert verdict(Analysis(significance=p)).verdict == "Inconclusive"
    assert verdict(Analysis(significance=p * 1.001)).verdict == "Fail"


@pytest.mark.parametrize("stable_requests", [49.0, None])
def test_too_little_stable_traffic_to_compare_with_is_inconclusive(prometheus, stable_requests) -> None:
    asked = prometheus(table(requests=100.0, errors=5.0, stable_requests=stable_requests))
    result = verdict(Analysis(minRequests=50))
    assert result.verdict == "Inconclusive"
    assert result.message == (
        f"error rate 0.0500 > maxErrorRate 0.01, but only {stable_requests or 0:.0f} stable requests in 5m "
        "to compare with (minRequests is 50)"
    )
    assert result.values["stableRequests"] == (stable_requests or 0.0) and "errorRateP" not in result.values
    assert requests_query(TARGET, canary=False, errors=True) not in asked


def test_stable_traffic_exactly_at_min_requests_is_compared(prometheus) -> None:
    prometheus(table(requests=50.0, errors=10.0, stable_requests=50.0, stable_errors=None))
    result = verdict(Analysis(minRequests=50))
    assert result.verdict == "Fail" and result.values["stableErrors"] == 0.0


def test_an_error_rate_within_the_limit_asks_nothing_of_the_stable_model(prometheus) -> None:
    asked = prometheus(table(requests=100.0, errors=1.0, stable_requests=None, stable_errors=None))
    result = verdict()
    assert result.verdict == "Pass" and "stableRequests" not in result.values
    assert requests_query(TARGET, canary=False) not in asked


def test_the_error_comparison_values_are_rounded_like_the_others(prometheus) -> None:
    """Prometheus' increase() extrapolates, so counts come back fractional."""
    prometheus(table(requests=200.12345, errors=6.00449, stable_requests=1000.12345, stable_errors=1.23456))
    result = verdict()
    z, p = analysis.error_rate_test(6.00449, 200.12345, 1.23456, 1000.12345)
    assert result.verdict == "Fail"
    assert {k: v for k, v in result.values.items() if k.startswith(("stable", "error", "canaryErrors"))} == {
        "canaryErrors": 6.004,
        "stableRequests": 1000.123,
        "stableErrors": 1.235,
        "stableErrorRate": 0.001234,
        "stableP95Ms": 100.0,
        "errorRateZ": round(z, 4),
        "errorRateP": round(p, 6),
    }
    assert result.values["errorRateZ"] not in (round(z, 3), round(z, 5))
    assert result.values["errorRateP"] not in (round(p, 5), round(p, 7))
