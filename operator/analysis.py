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

Business checks (``serving.rollout.analysis.business``; :func:`judge_business`) read the
outcomes users report back to the runtime's feedback endpoint, counted per serving digest
(feedback count, sum of outcomes and, for means, of squared outcomes), canary against stable
over the same window. The null hypothesis is that the canary is at most ``maxRelativeDrop``
below the stable model (rate: ``p_c >= (1 - d) p_s``; mean: ``mu_c >= (1 - d) mu_s``); the
check fails only when a one-sided test rejects it at ``confidence`` -- a two-proportion z-test
(Wald, on Agresti-Caffo adjusted rates) for rates, Welch's t-test for means. Fewer than
``minSamples`` outcomes in either arm holds the rollout ("waiting for feedback"), as does a
point estimate below the tolerance that is not significant.

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

from modelpress.api import Analysis, AnalysisResult, Business, Shadow

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
# Exported by the runtime's feedback endpoint (modelpress.jobs.feedback) per serving digest (same rule).
FEEDBACK_METRIC = "modelpress_feedback_total"  # label kind: binary | numeric
FEEDBACK_SUM_METRIC = "modelpress_feedback_outcome_sum"  # a summary's _sum; binary outcomes as 0/1
FEEDBACK_SQUARES_METRIC = "modelpress_feedback_outcome_squares_sum"  # the second moment, for a mean's variance
FEEDBACK_KIND = {"rate": "binary", "mean": "numeric"}  # Business.kind -> the feedback's kind label
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
    business_window: str | None = None,
) -> AnalysisResult:
    """Run every check of ``spec`` once (and the shadow checks of ``shadow``, when the stable
    model keeps shadowing the canary) and return the verdict with its measured values.

    ``business_window`` is the range the business outcomes are counted over (default: the
    target's): delayed feedback needs the whole stage so far, not just the last interval."""
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
        if spec.business is not None:
            business_target = Target(target.canary_digest, target.scope, business_window or target.window)
            _business_checks(spec.business, prometheus_url, business_target, timeout, c)
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
    # Never below the point estimate, never above 1 (the exact values): at p = 1 the formula
    # rounds to either side of 1 (1000 of 1000 at 0.95 gives 0.9999999999999999), and full
    # agreement must pass minAgreement 1.
    return min(1.0, max(p, (centre + margin) / (1.0 + z2n)))


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


# --------------------------------------------------------------------------- business


@dataclass(frozen=True)
class FeedbackArm:
    """One arm's feedback over a window: how many outcomes, their sum and the sum of their squares."""

    n: float
    total: float
    squares: float = 0.0

    @property
    def rate(self) -> float:
        # increase() extrapolates each counter on its own: a rate can come out a hair outside [0, 1].
        return min(max(self.total / self.n, 0.0), 1.0)

    @property
    def mean(self) -> float:
        return self.total / self.n

    @property
    def variance(self) -> float:
        """Sample variance (n - 1) from the moments; never negative (rounding of the sums)."""
        return max((self.squares - self.n * self.mean**2) / (self.n - 1.0), 0.0)


def tolerated_factor(stable: float, max_relative_drop: float) -> float:
    """The factor f of the null hypothesis canary >= f x stable: ``1 - d`` for a stable value at or
    above zero; ``1 + d`` below zero, so that "at most d worse" still means lower by d x |stable|."""
    return 1.0 - max_relative_drop if stable >= 0 else 1.0 + max_relative_drop


def rate_drop_test(canary: FeedbackArm, stable: FeedbackArm, max_relative_drop: float) -> tuple[float, float]:
    """(z, one-sided p) of H0 ``p_c >= (1 - d) p_s`` against H1 ``p_c < (1 - d) p_s``.

    The pooled z-test of the error-rate check assumes equal rates under H0; with a tolerated
    drop the null is a ratio, so this is the Wald test of ``p_c - (1 - d) p_s`` with each arm's
    own variance. The rates are Agresti-Caffo adjusted (one success and one failure added per
    arm): that keeps the variance positive at 0% and 100% and the test's size close to nominal
    in small arms, and changes nothing at the thousands of outcomes a rate needs.
    """
    factor = 1.0 - max_relative_drop
    n_c, n_s = canary.n + 2.0, stable.n + 2.0
    p_c = (canary.rate * canary.n + 1.0) / n_c
    p_s = (stable.rate * stable.n + 1.0) / n_s
    z = (p_c - factor * p_s) / math.sqrt(p_c * (1.0 - p_c) / n_c + factor**2 * p_s * (1.0 - p_s) / n_s)
    return z, 0.5 * math.erfc(-z / math.sqrt(2.0))


def mean_drop_test(canary: FeedbackArm, stable: FeedbackArm, max_relative_drop: float) -> tuple[float, float, float]:
    """(t, degrees of freedom, one-sided p) of Welch's test of H0 ``mu_c >= f mu_s`` against
    H1 ``mu_c < f mu_s`` (f from :func:`tolerated_factor`).

    Welch rather than Student: the arms' variances differ (a different model, different
    traffic shares). Its inputs are counts, sums and sums of squares -- what Prometheus
    counters can carry; a bootstrap would need every outcome. Both arms need n >= 2.
    """
    factor = tolerated_factor(stable.mean, max_relative_drop)
    difference = canary.mean - factor * stable.mean
    a = canary.variance / canary.n
    b = factor**2 * stable.variance / stable.n
    if a + b == 0.0:  # every outcome of each arm the same: the difference is exact
        return math.copysign(math.inf, difference), canary.n + stable.n - 2.0, 0.0 if difference < 0 else 1.0
    df = (a + b) ** 2 / (a * a / (canary.n - 1.0) + b * b / (stable.n - 1.0))
    t = difference / math.sqrt(a + b)
    return t, df, student_t_cdf(t, df)


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (Welch's are fractional).

    Hand-written because the operator image carries no statistics library (the standard
    library has the normal distribution only, and at the tens of samples a mean may be judged
    with the normal tail is too thin): the regularized incomplete beta function by Lentz's
    continued fraction (Numerical Recipes, 6.4). Tests compare it with scipy.
    """
    if math.isinf(t):
        return 0.0 if t < 0 else 1.0
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t < 0 else 1.0 - tail


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return min(max(x, 0.0), 1.0)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast below (a + 1) / (a + b + 2); above, use I_x(a, b) = 1 - I_1-x(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The incomplete beta function's continued fraction, modified Lentz evaluation."""
    tiny = 1e-300  # stands in for a zero denominator

    def nonzero(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 10_000):  # tens of terms in practice, even at a million outcomes per arm
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        for coefficient in (even, odd):
            d = 1.0 / nonzero(1.0 + coefficient * d)
            c = nonzero(1.0 + coefficient / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def judge_business(business: Business, canary: FeedbackArm, stable: FeedbackArm, window: str) -> _Checks:
    """The verdict parts of the business check (module docstring), pure: values, failures, gaps."""
    c = _Checks()
    c.values.update(businessCanaryFeedback=round(canary.n, 3), businessStableFeedback=round(stable.n, 3))
    if min(canary.n, stable.n) < business.min_samples:
        c.unknown.append(
            f"{business.name}: waiting for feedback: {canary.n:.0f} canary and {stable.n:.0f} stable outcomes in "
            f"{window}, minSamples is {business.min_samples} per arm"
        )
        return c
    drop = business.max_relative_drop
    if business.kind == "rate":
        canary_value, stable_value = canary.rate, stable.rate
        z, p = rate_drop_test(canary, stable, drop)
        c.values.update(businessCanaryRate=round(canary_value, 6), businessStableRate=round(stable_value, 6),
                        businessZ=round(z, 4))  # fmt: skip
        statistic = f"two-proportion z {z:.2f}"
    else:
        canary_value, stable_value = canary.mean, stable.mean
        t, df, p = mean_drop_test(canary, stable, drop)
        c.values.update(
            businessCanaryMean=round(canary_value, 6), businessStableMean=round(stable_value, 6),
            businessCanaryStd=round(math.sqrt(canary.variance), 6),
            businessStableStd=round(math.sqrt(stable.variance), 6), businessT=round(t, 4), businessDf=round(df, 1),
        )  # fmt: skip
        statistic = f"Welch t {t:.2f}, df {df:.0f}"
    c.values["businessP"] = round(p, 6)
    numbers = f"{business.name}: canary {business.kind} {canary_value:.4g} vs stable {stable_value:.4g}"
    if stable_value != 0:
        change = canary_value / stable_value - 1.0 if stable_value > 0 else 1.0 - canary_value / stable_value
        c.values["businessRelativeChange"] = round(change, 6)
        numbers += f" ({change:+.2%})"
    numbers += f" over {canary.n:.0f} / {stable.n:.0f} outcomes in {window}"
    alpha = 1.0 - business.confidence
    test = f"{statistic}, p {p:.2g}"
    if p < alpha:
        c.failed.append(f"{numbers}: significantly more than {drop:.1%} below stable ({test} < {alpha:.2g})")
    elif canary_value < tolerated_factor(stable_value, drop) * stable_value:
        c.unknown.append(
            f"{numbers}: more than {drop:.1%} below stable but not significantly ({test}); more feedback decides"
        )
    return c


def feedback_selector(t: Target, canary: bool, kind: str = "") -> str:
    """One arm's series; ``kind`` pins the feedback counter's kind label (the sums carry none)."""
    return t.selector(canary, f'kind="{kind}"' if kind else "")


def feedback_query(t: Target, metric: str, canary: bool, kind: str = "") -> str:
    return f"sum(increase({metric}{feedback_selector(t, canary, kind)}[{t.window}]))"


def measure_feedback(
    business: Business, prometheus_url: str, target: Target, timeout: float = 5.0
) -> tuple[FeedbackArm, FeedbackArm] | None:
    """Each arm's feedback of the business check's kind; None when no feedback series match at all.

    The sums are asked for only once both arms have ``minSamples``: holding costs two queries.
    """
    kind = FEEDBACK_KIND[business.kind]
    counts = [
        query(prometheus_url, feedback_query(target, FEEDBACK_METRIC, arm, kind), timeout) for arm in (True, False)
    ]
    if counts == [None, None]:
        return None
    n_canary, n_stable = (n or 0.0 for n in counts)
    if min(n_canary, n_stable) < business.min_samples:
        return FeedbackArm(n_canary, 0.0), FeedbackArm(n_stable, 0.0)

    def arm(canary: bool, n: float) -> FeedbackArm:
        total = query(prometheus_url, feedback_query(target, FEEDBACK_SUM_METRIC, canary), timeout) or 0.0
        squares = 0.0
        if business.kind == "mean":
            squares = query(prometheus_url, feedback_query(target, FEEDBACK_SQUARES_METRIC, canary), timeout) or 0.0
        return FeedbackArm(n, total, squares)

    return arm(True, n_canary), arm(False, n_stable)


def _business_checks(business: Business, prometheus_url: str, target: Target, timeout: float, c: _Checks) -> None:
    """Measure and judge the business outcome into ``c``."""
    arms = measure_feedback(business, prometheus_url, target, timeout)
    if arms is None:
        c.values.update(businessCanaryFeedback=0.0, businessStableFeedback=0.0)
        selector = feedback_selector(target, True, FEEDBACK_KIND[business.kind])
        c.unknown.append(
            f"{business.name}: waiting for feedback: none in {target.window}, minSamples is {business.min_samples} "
            f"per arm; no series match {FEEDBACK_METRIC}{selector} or the stable model's (does the application "
            "post feedback, and is the runtime scraped?)"
        )
        return
    judged = judge_business(business, *arms, target.window)
    c.values.update(judged.values)
    c.failed.extend(judged.failed)
    c.unknown.extend(judged.unknown)
