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

Shadow checks (``serving.rollout.shadow``; :func:`analyse_shadow` for the shadow stage, and
appended to :func:`analyse` while the canary runs when ``duringCanary``) read what the
stable runtime exports about the candidate it shadows, pinned by ``shadow_digest`` (the
candidate's sha256): compared rows, top-1 agreements, and the means of KL divergence,
cosine, absolute and relative error (``increase(_sum) / increase(_count)``). Fewer than
``minSamples`` rows is Inconclusive, never a pass. Top-1 agreement fails only when the
one-sided Wilson upper bound at ``confidence`` is below ``minAgreement`` (a point estimate
below it that is not significant holds for more samples); the means are judged as point
estimates once ``minSamples`` are in.

Plain urllib is used on purpose: the HTTP query API is one GET, and the operator image
stays free of a Prometheus client library.
"""

from __future__ import annotations

import json
import math
import statistics
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime

from modelpress.api import Analysis, AnalysisResult, Shadow

# Names exported by modelpress.jobs.serving (duplicated: the operator must not import the
# ML runtime; tests/serving checks they match).
REQUESTS_METRIC = "modelpress_inference_requests_total"
LATENCY_METRIC = "modelpress_inference_latency_seconds"
DIGEST_LABEL = "artifact_digest"
# Exported by modelpress.jobs.shadow for the candidate the stable runtime shadows (same rule).
SHADOW_DIGEST_LABEL = "shadow_digest"
SHADOW_REQUESTS_METRIC = "modelpress_shadow_requests_total"
SHADOW_SAMPLES_METRIC = "modelpress_shadow_samples_total"
SHADOW_AGREEMENTS_METRIC = "modelpress_shadow_top1_agreements_total"
SHADOW_KL_METRIC = "modelpress_shadow_kl_divergence"
SHADOW_COSINE_METRIC = "modelpress_shadow_cosine"
SHADOW_ABS_ERROR_METRIC = "modelpress_shadow_abs_error"
SHADOW_RELATIVE_ERROR_METRIC = "modelpress_shadow_relative_error"
# Shadow bounds judged as a mean (wire name -> histogram, value name, True: the bound is a minimum).
SHADOW_MEANS = {
    "maxKlDivergence": (SHADOW_KL_METRIC, "shadowKlDivergence", False),
    "minCosine": (SHADOW_COSINE_METRIC, "shadowCosine", True),
    "maxAbsError": (SHADOW_ABS_ERROR_METRIC, "shadowAbsError", False),
    "maxRelativeError": (SHADOW_RELATIVE_ERROR_METRIC, "shadowRelativeError", False),
}


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
    shadow: ShadowJudge | None = None,
) -> AnalysisResult:
    """Run every check of ``spec`` once (and the shadow checks of ``shadow``, when the stable
    model keeps shadowing the canary) and return the verdict with its measured values."""
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
        if shadow is not None:
            _shadow_checks(shadow, prometheus_url, timeout, c)
    except PrometheusError as e:
        return AnalysisResult(time=stamp, verdict="Inconclusive", values=c.values, message=str(e))
    return _verdict(stamp, c, "all checks passed")


# --------------------------------------------------------------------------- shadow


@dataclass(frozen=True)
class ShadowTarget:
    """The candidate the stable runtime shadows: its digest within a scope, over a window."""

    shadow_digest: str
    scope: str = ""
    window: str = "5m"

    def selector(self, extra: str = "") -> str:
        parts = [p for p in (self.scope, f'{SHADOW_DIGEST_LABEL}="{self.shadow_digest}"', extra) if p]
        return "{" + ",".join(parts) + "}"


@dataclass(frozen=True)
class ShadowJudge:
    """What to judge the shadow comparison by: the spec's bounds for the model's task, and where."""

    shadow: Shadow
    task: str
    target: ShadowTarget


def shadow_count_query(t: ShadowTarget, metric: str, extra: str = "") -> str:
    return f"sum(increase({metric}{t.selector(extra)}[{t.window}]))"


def shadow_mean_query(t: ShadowTarget, histogram: str) -> str:
    """Mean per compared row over the window; NaN (no result) when nothing was observed."""
    return f"{shadow_count_query(t, histogram + '_sum')} / {shadow_count_query(t, histogram + '_count')}"


def wilson_upper_bound(successes: float, n: float, confidence: float) -> float:
    """One-sided Wilson score upper bound of a proportion at ``confidence``.

    Hand-written (one formula) because the operator image carries no statistics library;
    the normal quantile comes from the standard library's ``statistics.NormalDist``.
    Wilson rather than the plain normal interval: it stays inside [0, 1] and keeps its
    coverage at proportions near 1, which is where agreement thresholds live.
    """
    z = statistics.NormalDist().inv_cdf(confidence)
    p = min(max(successes / n, 0.0), 1.0)
    z2n = z * z / n
    centre = p + z2n / 2.0
    margin = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    return min(1.0, (centre + margin) / (1.0 + z2n))


@dataclass(frozen=True)
class ShadowMeasures:
    """What Prometheus said about the shadow comparison over one window."""

    samples: float
    agreements: float | None = None
    means: dict[str, float | None] = field(default_factory=dict)  # bound's wire name -> mean (None: no data)
    dropped: float = 0.0
    failed: float = 0.0


def judge_shadow(shadow: Shadow, task: str, m: ShadowMeasures, window: str) -> _Checks:
    """The verdict parts of the shadow checks (module docstring), pure: values, failures, gaps."""
    c = _Checks()
    c.values.update(shadowSamples=round(m.samples, 3), shadowDropped=round(m.dropped, 3))
    if m.failed:
        c.values["shadowFailed"] = round(m.failed, 3)
    if m.samples < shadow.min_samples:
        c.unknown.append(
            f"too few shadow samples: {m.samples:.0f} compared in {window}, minSamples is {shadow.min_samples}"
        )
        return c
    for wire, bound in shadow.checks(task).items():
        if wire == "minAgreement":
            _judge_agreement(shadow, m, bound, c)
            continue
        _, name, is_minimum = SHADOW_MEANS[wire]
        mean = m.means.get(wire)
        if mean is None:
            c.unknown.append(f"{name}: no shadow data")
            continue
        c.values[name] = round(mean, 6)
        if (mean < bound) if is_minimum else (mean > bound):
            c.failed.append(f"shadow mean {name.removeprefix('shadow')} {mean:.6g} {'<' if is_minimum else '>'} "
                            f"{wire} {bound:g} over {m.samples:.0f} samples")  # fmt: skip
    return c


def _judge_agreement(shadow: Shadow, m: ShadowMeasures, bound: float, c: _Checks) -> None:
    if m.agreements is None:
        c.unknown.append("shadow top-1 agreement: no data")
        return
    # increase() extrapolates each counter on its own, so agreements can come out a fraction
    # above the samples they are part of: never more than all.
    agreements = min(m.agreements, m.samples)
    agreement = agreements / m.samples
    upper = wilson_upper_bound(agreements, m.samples, shadow.confidence)
    c.values.update(shadowAgreement=round(agreement, 6), shadowAgreementUpperBound=round(upper, 6))
    numbers = (
        f"shadow top-1 agreement {agreement:.4f} over {m.samples:.0f} samples (upper bound {upper:.4f} at "
        f"confidence {shadow.confidence:g})"
    )
    if upper < bound:
        c.failed.append(f"{numbers} < minAgreement {bound:g}")
    elif agreement < bound:
        c.unknown.append(f"{numbers}: below minAgreement {bound:g} but not significantly; more samples decide")


def measure_shadow(judge: ShadowJudge, prometheus_url: str, timeout: float = 5.0) -> ShadowMeasures | None:
    """Ask Prometheus for the shadow comparison; None when no series match at all."""
    t = judge.target
    samples = query(prometheus_url, shadow_count_query(t, SHADOW_SAMPLES_METRIC), timeout)
    dropped = query(prometheus_url, shadow_count_query(t, SHADOW_REQUESTS_METRIC, 'outcome="dropped"'), timeout)
    failed = query(prometheus_url, shadow_count_query(t, SHADOW_REQUESTS_METRIC, 'outcome="failed"'), timeout)
    if samples is None:
        return None
    checks = judge.shadow.checks(judge.task) if samples >= judge.shadow.min_samples else {}
    agreements = None
    if "minAgreement" in checks:
        agreements = query(prometheus_url, shadow_count_query(t, SHADOW_AGREEMENTS_METRIC), timeout) or 0.0
    means = {
        wire: query(prometheus_url, shadow_mean_query(t, SHADOW_MEANS[wire][0]), timeout)
        for wire in checks
        if wire in SHADOW_MEANS
    }
    return ShadowMeasures(samples, agreements, means, dropped or 0.0, failed or 0.0)


def _shadow_checks(judge: ShadowJudge, prometheus_url: str, timeout: float, c: _Checks) -> None:
    """Measure and judge the shadow comparison into ``c``."""
    measures = measure_shadow(judge, prometheus_url, timeout)
    if measures is None:
        c.values["shadowSamples"] = 0.0
        c.unknown.append(
            f"too few shadow samples: 0 compared in {judge.target.window}, minSamples is {judge.shadow.min_samples}; "
            f"no series match {SHADOW_SAMPLES_METRIC}{judge.target.selector()} (does the stable runtime shadow "
            "the candidate, and is it scraped?)"
        )
        return
    judged = judge_shadow(judge.shadow, judge.task, measures, judge.target.window)
    c.values.update(judged.values)
    c.failed.extend(judged.failed)
    c.unknown.extend(judged.unknown)


def _verdict(stamp: str, c: _Checks, passed: str) -> AnalysisResult:
    if c.failed:
        return AnalysisResult(time=stamp, verdict="Fail", values=c.values, message="; ".join(c.failed))
    if c.unknown:
        return AnalysisResult(time=stamp, verdict="Inconclusive", values=c.values, message="; ".join(c.unknown))
    return AnalysisResult(time=stamp, verdict="Pass", values=c.values, message=passed)


def shadow_summary(values: dict[str, float]) -> str:
    """``N samples, agreement x`` (or the task's means) from a verdict's values, for conditions."""
    parts = [f"{values.get('shadowSamples', 0):.0f} samples"]
    if "shadowAgreement" in values:
        parts.append(f"agreement {values['shadowAgreement']:.4f}")
    parts += [
        f"{name.removeprefix('shadow')} {values[name]:.4g}" for _, name, _ in SHADOW_MEANS.values() if name in values
    ]
    return ", ".join(parts)


def analyse_shadow(
    judge: ShadowJudge, prometheus_url: str, now: datetime | None = None, timeout: float = 5.0
) -> AnalysisResult:
    """The shadow stage's verdict: the shadow checks alone (no user traffic reaches the candidate)."""
    stamp = (now or datetime.now(UTC)).isoformat()
    c = _Checks()
    try:
        _shadow_checks(judge, prometheus_url, timeout, c)
    except PrometheusError as e:
        return AnalysisResult(time=stamp, verdict="Inconclusive", values=c.values, message=str(e))
    return _verdict(stamp, c, f"shadow checks passed: {shadow_summary(c.values)}")
