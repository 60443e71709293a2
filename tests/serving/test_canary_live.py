"""Analysed canary on real parts: two modelpress-onnx ModelServers (stable fp32, canary
int8), a real Prometheus scraping them every second, a load generator splitting traffic
by the canary percent, operator/analysis.py querying Prometheus and operator/rollout.py
deciding. Storage URIs are just names here; the load generator plays the router."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from modelpress.api import Analysis, Rollout
from modelpress.jobs import serving
from modelpress.operator import analysis as analysis_mod
from modelpress.operator.analysis import Target, analyse
from modelpress.operator.rollout import plan

STABLE_URI, CANARY_URI = "file:///artifacts/fp32/", "file:///artifacts/int8/"
SCOPE = 'model="digits"'
WINDOW = "20s"


def digest(model_dir) -> str:
    return hashlib.sha256(serving.find_model_file(model_dir).read_bytes()).hexdigest()


def drive_rollout(
    send_load, rollout: Rollout, stable, canary, prom, x, canary_digest: str, requests_per_step: int = 200
):
    """Run the rollout to its end: per interval, load at the current split, let Prometheus
    scrape, analyse, plan. Returns (final decision, analyses, traffic per interval)."""
    d = plan(rollout, None, CANARY_URI, STABLE_URI, datetime.now(UTC))
    analyses, splits = [], []
    while d.phase == "RollingOut":
        percent = d.traffic.canary_percent
        splits.append(percent)
        send_load(stable, canary, percent, requests_per_step, x)
        time.sleep(2.5)  # two scrapes
        result = analyse(rollout.analysis, prom.url, Target(canary_digest, SCOPE, WINDOW))
        analyses.append(result)
        d = plan(rollout, d.status, CANARY_URI, STABLE_URI, datetime.now(UTC), analysis=result)
        assert len(analyses) <= 6, f"rollout did not finish: {[a.message for a in analyses]}"
    return d, analyses, splits


@pytest.fixture
def x(digits_models) -> np.ndarray:
    return np.load(digits_models["val"])["x"]


def test_metric_names_match_the_runtime():
    assert (analysis_mod.REQUESTS_METRIC, analysis_mod.LATENCY_METRIC, analysis_mod.DIGEST_LABEL) == (
        serving.REQUESTS_METRIC, serving.LATENCY_METRIC, serving.DIGEST_LABEL,
    )  # fmt: skip


def test_slow_canary_is_rolled_back_within_failure_limit(digits_models, start_server, start_prometheus, x, load):
    """Injected latency fails the p95 ratio check at every analysis. (A good canary being
    promoted and an erroring one rolled back run through the operator in
    test_rollout_operator.py.)"""
    check = "p95 latency ratio"
    stable = start_server(digits_models["fp32"])
    canary = start_server(digits_models["int8"], {"MODELPRESS_CHAOS_LATENCY_MS": "150"})
    prom = start_prometheus([stable, canary])
    rollout = Rollout(
        steps=[20, 50], interval="20s", analysis=Analysis(min_requests=15, max_latency_ratio=10.0, failure_limit=2)
    )
    # 150 ms per canary request: 100 requests at 20 % keep each interval short.
    d, analyses, splits = drive_rollout(load, rollout, stable, canary, prom, x, digest(digits_models["int8"]), 100)
    assert d.phase == "RolledBack"
    assert [a.verdict for a in analyses] == ["Fail", "Fail"]
    assert splits == [20, 20]  # never advanced past the first step
    assert all(check in a.message for a in analyses), [a.message for a in analyses]
    assert d.traffic.stable_uri == STABLE_URI and d.traffic.canary_uri is None
    assert d.status.history[-1].event == "RolledBack" and check in d.status.history[-1].message


def test_too_little_traffic_is_not_a_pass(digits_models, start_server, start_prometheus, x, load):
    stable, canary = start_server(digits_models["fp32"]), start_server(digits_models["int8"])
    prom = start_prometheus([stable, canary])
    load(stable, canary, 10, 50, x)  # ~5 canary requests
    time.sleep(2.5)
    result = analyse(Analysis(min_requests=50), prom.url, Target(digest(digits_models["int8"]), SCOPE, WINDOW))
    assert result.verdict == "Inconclusive"
    assert "too little traffic" in result.message and result.values["canaryRequests"] < 50


def test_extra_queries_bounds_errors_and_empty_results(digits_models, start_server, start_prometheus, x, load):
    stable, canary = start_server(digits_models["fp32"]), start_server(digits_models["int8"])
    prom = start_prometheus([stable, canary])
    load(stable, canary, 50, 100, x)
    time.sleep(2.5)
    target = Target(digest(digits_models["int8"]), SCOPE, WINDOW)
    base = {"minRequests": 10, "maxLatencyRatio": 1000}

    def run(query: dict):
        return analyse(Analysis.model_validate({**base, "queries": [query]}), prom.url, target)

    total = f"sum(modelpress_inference_requests_total{{{SCOPE}}})"
    ok = run({"name": "served", "query": total, "min": 50})
    assert ok.verdict == "Pass" and ok.values["served"] >= 100
    too_high = run({"name": "served", "query": total, "max": 10})
    assert too_high.verdict == "Fail" and "served" in too_high.message and "> max 10" in too_high.message
    broken = run({"name": "broken", "query": "sum(rate(", "max": 1})
    assert broken.verdict == "Inconclusive" and "failed" in broken.message
    empty = run({"name": "nothing", "query": "sum(no_such_metric_anywhere)", "max": 1})
    assert empty.verdict == "Inconclusive" and "nothing: empty result" in empty.message


def test_unreachable_prometheus_is_inconclusive_never_a_pass(unused_port):
    result = analyse(Analysis(), f"http://127.0.0.1:{unused_port}", Target("abc", SCOPE, WINDOW), timeout=2)
    assert result.verdict == "Inconclusive" and "unreachable" in result.message


def test_a_same_named_model_in_another_namespace_does_not_change_the_verdict(
    digits_models, start_server, start_prometheus, x, load
):
    """Staging (namespace "other") runs the same int8 artifact under the same model name
    and it fails every request. Scoped by namespace, as the operator scopes by default,
    the canary in "ml" passes; scoped by model name alone, staging's errors would be
    counted as the canary's."""
    stable, canary = start_server(digits_models["fp32"]), start_server(digits_models["int8"])
    staging = start_server(digits_models["int8"], {"MODELPRESS_CHAOS_ERROR_RATE": "1"})
    prom = start_prometheus([stable, canary, staging], namespaces=["ml", "ml", "other"])
    assert load(stable, canary, 50, 100, x) == {"stable:200": 50, "canary:200": 50}
    assert load(staging, None, 0, 60, x) == {"stable:500": 60}
    prom.wait_until('sum(modelpress_inference_requests_total{namespace="other",code="500"}) >= 60')
    prom.wait_until('sum(modelpress_inference_requests_total{namespace="ml"}) >= 100')
    spec, canary_digest = Analysis(min_requests=10, max_latency_ratio=1000), digest(digits_models["int8"])

    scoped = analyse(spec, prom.url, Target(canary_digest, analysis_mod.scope("digits", "ml"), WINDOW))
    assert scoped.verdict == "Pass", scoped.message
    assert scoped.values["canaryErrorRate"] == 0.0

    unscoped = analyse(spec, prom.url, Target(canary_digest, analysis_mod.scope("digits", "ml", ""), WINDOW))
    assert unscoped.verdict == "Fail" and "error rate" in unscoped.message
    assert unscoped.values["canaryRequests"] > scoped.values["canaryRequests"]

    # A namespace Prometheus has no series for: not a pass, and the message says why.
    nowhere = analyse(spec, prom.url, Target(canary_digest, analysis_mod.scope("digits", "prod"), WINDOW))
    assert nowhere.verdict == "Inconclusive" and "no series match" in nowhere.message
    assert 'namespace="prod"' in nowhere.message
