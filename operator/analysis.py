"""Canary analysis: ask Prometheus how the canary does against the stable model.

The modelpress-onnx runtime labels its request counter and latency histogram with the
sha256 of the served model file (``artifact_digest``), so the canary is
``artifact_digest="<canary sha>"`` and the stable model is every other series of the
same scope (``artifact_digest!="<canary sha>"``) -- the same queries work in Knative
and Standard deployment mode and need no per-pod labels.

Verdicts, never a blind pass:

* ``Fail`` -- a check with real data broke its bound (error rate, p95 ratio, an extra
  query); the message names it with the measured value.
* ``Inconclusive`` -- Prometheus unreachable, a PromQL error, an empty or NaN result, or
  fewer than ``minRequests`` canary requests in the window ("too little traffic is not
  a pass").

The error rate is not judged on its raw ratio alone: a canary above ``maxErrorRate``
fails only when it also errs significantly more than the stable model over the same
window (one-sided two-proportion z-test, p below ``significance``, the stable model
with at least ``minRequests`` requests). Otherwise it is Inconclusive: too few
requests to tell, or the stable model errs as much (not the canary's doing). The
counts, rates, z and p go into the verdict's values.
* ``Pass`` -- every check had data and held.

Plain urllib is used on purpose: the HTTP query API is one GET, and the operator image
stays free of a Prometheus client library.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime

from modelpress.api import Analysis, AnalysisResult

# Names exported by modelpress.jobs.serving (duplicated: the operator must not import the
# ML runtime; tests/serving checks they match).
REQUESTS_METRIC = "modelpress_inference_requests_total"
LATENCY_METRIC = "modelpress_inference_latency_seconds"
DIGEST_LABEL = "artifact_digest"


class PrometheusError(Exception):
    """Prometheus could not answer a query (unreachable, HTTP or PromQL error)."""


def query(prometheus_url: str, promql: str, timeout: float = 5.0) -> float | None:
    """One instant query; the single number it returns, or None when the result is empty/NaN.

    A vector with several series is an error: a bound needs one number.
    """
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:  # Prometheus answers 400/422 with a JSON error
        try:
            detail = json.loads(e.read()).get("error", "")
        except (ValueError, OSError):
            detail = ""
        raise PrometheusError(f"query {promql!r} failed: HTTP {e.code} {detail}".strip()) from e
    except (OSError, ValueError) as e:
        raise PrometheusError(f"Prometheus at {prometheus_url} is unreachable: {e}") from e
    if body.get("status") != "success":
        raise PrometheusError(f"query {promql!r} failed: {body.get('error', body)}")
    data = body["data"]
    if data["resultType"] == "scalar":
        value = float(data["result"][1])
    elif data["resultType"] == "vector":
        if not data["result"]:
            return None
        if len(data["result"]) > 1:
            raise PrometheusError(f"query {promql!r} returned {len(data['result'])} series; aggregate it to one")
        value = float(data["result"][0]["value"][1])
    else:
        raise PrometheusError(f"query {promql!r} returned a {data['resultType']}; use an instant vector or scalar")
    return None if math.isnan(value) else value


def scope(model: str, namespace: str, namespace_label: str = "namespace") -> str:
    """The matchers that pin one InferenceService: its ``model`` label and, where
    Prometheus carries it under ``namespace_label``, its namespace (two same-named
    InferenceServices in different namespaces must not be judged together). Both names
    are DNS-1123 labels (the API validates them), so they need no PromQL escaping."""
    matchers = [f'model="{model}"']
    if namespace_label:
        matchers.insert(0, f'{namespace_label}="{namespace}"')
    return ",".join(matchers)


@dataclass(frozen=True)
class Target:
    """What to compare: the canary's digest within a scope of label matchers.

    ``scope`` holds extra PromQL matchers that pin the InferenceService, e.g.
    ``namespace="prod",model="digits"``.
    """

    canary_digest: str
    scope: str = ""
    window: str = "5m"

    def selector(self, canary: bool, extra: str = "") -> str:
        op = "=" if canary else "!="
        parts = [p for p in (self.scope, f'{DIGEST_LABEL}{op}"{self.canary_digest}"', extra) if p]
        return "{" + ",".join(parts) + "}"


def requests_query(t: Target, canary: bool = True, errors: bool = False) -> str:
    extra = 'code=~"5.."' if errors else ""
    return f"sum(increase({REQUESTS_METRIC}{t.selector(canary, extra)}[{t.window}]))"


def error_rate_test(
    canary_errors: float, canary_requests: float, stable_errors: float, stable_requests: float
) -> tuple[float, float]:
    """(z, one-sided p) of the pooled two-proportion z-test that the canary's error rate
    is above the stable model's. Hand-written (five lines of arithmetic) because the
    operator image carries no statistics library; both request counts must be positive.
    """
    pooled = (canary_errors + stable_errors) / (canary_requests + stable_requests)
    variance = pooled * (1.0 - pooled) * (1.0 / canary_requests + 1.0 / stable_requests)
    difference = canary_errors / canary_requests - stable_errors / stable_requests
    # No variance: no errors anywhere, or nothing but errors; either way no difference.
    z = difference / math.sqrt(variance) if variance > 0 else 0.0
    return z, 0.5 * math.erfc(z / math.sqrt(2.0))


def p95_query(t: Target, canary: bool) -> str:
    return f"histogram_quantile(0.95, sum by (le) (rate({LATENCY_METRIC}_bucket{t.selector(canary)}[{t.window}])))"


@dataclass
class _Checks:
    values: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def _compare_errors(
    spec: Analysis, prometheus_url: str, target: Target, timeout: float, errors: float, requests: float, c: _Checks
) -> None:
    """A canary error rate above maxErrorRate, tested against the stable model's (module docstring)."""
    head = f"error rate {errors / requests:.4f} > maxErrorRate {spec.max_error_rate}"
    stable_requests = query(prometheus_url, requests_query(target, canary=False), timeout) or 0.0
    c.values.update(canaryErrors=round(errors, 3), stableRequests=round(stable_requests, 3))
    if stable_requests < spec.min_requests:
        c.unknown.append(
            f"{head}, but only {stable_requests:.0f} stable requests in {target.window} to compare with "
            f"(minRequests is {spec.min_requests})"
        )
        return
    stable_errors = query(prometheus_url, requests_query(target, canary=False, errors=True), timeout) or 0.0
    z, p = error_rate_test(errors, requests, stable_errors, stable_requests)
    stable_rate = stable_errors / stable_requests
    c.values.update(
        stableErrors=round(stable_errors, 3), stableErrorRate=round(stable_rate, 6),
        errorRateZ=round(z, 4), errorRateP=round(p, 6),
    )  # fmt: skip
    numbers = f"{head} (stable {stable_rate:.4f}; z {z:.2f}, p {p:.2g})"
    if p < spec.significance:
        c.failed.append(numbers)
    else:
        c.unknown.append(f"{numbers}: not significantly above the stable model at significance {spec.significance}")


def analyse(
    spec: Analysis,
    prometheus_url: str,
    target: Target,
    now: datetime | None = None,
    timeout: float = 5.0,
) -> AnalysisResult:
    """Run every check of ``spec`` once and return the verdict with its measured values."""
    stamp = (now or datetime.now(UTC)).isoformat()
    c = _Checks()
    try:
        counted = query(prometheus_url, requests_query(target), timeout)
        canary_requests = counted or 0.0
        c.values["canaryRequests"] = round(canary_requests, 3)
        if canary_requests < spec.min_requests:
            message = (
                f"too little traffic to judge: {canary_requests:.0f} canary requests in {target.window}, "
                f"minRequests is {spec.min_requests}"
            )
            if counted is None:  # not even a zero: nothing is scraped under these labels
                message += (
                    f"; no series match {REQUESTS_METRIC}{target.selector(True)} (is the runtime scraped, and "
                    "does Prometheus put the operator's analysis namespace label on its series?)"
                )
            return AnalysisResult(time=stamp, verdict="Inconclusive", values=c.values, message=message)
        errors = query(prometheus_url, requests_query(target, errors=True), timeout) or 0.0
        error_rate = errors / canary_requests
        c.values["canaryErrorRate"] = round(error_rate, 6)
        if error_rate > spec.max_error_rate:
            _compare_errors(spec, prometheus_url, target, timeout, errors, canary_requests, c)

        canary_p95 = query(prometheus_url, p95_query(target, canary=True), timeout)
        stable_p95 = query(prometheus_url, p95_query(target, canary=False), timeout)
        if canary_p95 is None or stable_p95 is None or stable_p95 <= 0:
            c.unknown.append("p95 latency: no latency data for " + ("canary" if canary_p95 is None else "stable"))
        else:
            ratio = canary_p95 / stable_p95
            c.values.update(
                canaryP95Ms=round(canary_p95 * 1000, 4), stableP95Ms=round(stable_p95 * 1000, 4),
                latencyRatio=round(ratio, 4),
            )  # fmt: skip
            if ratio > spec.max_latency_ratio:
                c.failed.append(
                    f"p95 latency ratio {ratio:.2f} (canary {canary_p95 * 1000:.2f} ms / stable "
                    f"{stable_p95 * 1000:.2f} ms) > maxLatencyRatio {spec.max_latency_ratio}"
                )
        for q in spec.queries:
            value = query(prometheus_url, q.query, timeout)
            if value is None:
                c.unknown.append(f"query {q.name}: empty result")
                continue
            c.values[q.name] = value
            if q.max is not None and value > q.max:
                c.failed.append(f"query {q.name} = {value:g} > max {q.max:g}")
            if q.min is not None and value < q.min:
                c.failed.append(f"query {q.name} = {value:g} < min {q.min:g}")
    except PrometheusError as e:
        return AnalysisResult(time=stamp, verdict="Inconclusive", values=c.values, message=str(e))
    if c.failed:
        return AnalysisResult(time=stamp, verdict="Fail", values=c.values, message="; ".join(c.failed))
    if c.unknown:
        return AnalysisResult(time=stamp, verdict="Inconclusive", values=c.values, message="; ".join(c.unknown))
    return AnalysisResult(time=stamp, verdict="Pass", values=c.values, message="all checks passed")
