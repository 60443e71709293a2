"""Canary analysis verdicts without Prometheus: ``analysis.query`` answers from a table of PromQL -> value.

The live tests (tests/serving/test_canary_live.py) prove the queries against a real
Prometheus; these pin the verdict logic: every verdict, each limit exactly met and just
broken, empty series, a stable p95 of 0 and the minRequests boundary.
"""

from __future__ import annotations

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
    **extra: float | None,
) -> dict[str, float | None]:
    """PromQL -> what Prometheus answers (None: an empty result)."""
    return {
        requests_query(TARGET): requests,
        requests_query(TARGET, errors=True): errors,
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
        (table(errors=3.0), Analysis(maxErrorRate=0.01), "error rate 0.0150 > maxErrorRate 0.01"),
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
        "error rate 0.1000 > maxErrorRate 0.01; "
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
