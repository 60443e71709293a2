"""One measurement for every model: baseline and candidates go through the same code.

Each model is served by an onnxruntime session with pinned threads, warmed up, then
timed batch by batch at ``validation.batchSize`` on the validation samples (unpadded
text stays unpadded). The score comes from the same session. Because nothing here
differs between baseline and candidate, the comparison is fair by construction.

The model is untrusted: every run happens under the time limit set by :func:`time_limit`
(an ONNX ``Loop`` can be told to run 2^62 times), and a model whose outputs or score are
NaN or infinite is reported as such (:class:`NonFiniteResult`) instead of being scored:
``nan > budget`` is False, so a NaN score would otherwise pass every threshold.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from modelpress.api import ModelMetrics
from modelpress.jobs.dataset import Samples, collate

log = logging.getLogger(__name__)

WARMUP_RUNS = 5
WARMUP_FRACTION = 0.25  # of the time budget, spent warming up before timing
MIN_TIMED_RUNS = 20
MAX_TIMED_RUNS = 300
# Seconds of timed runs per model: enough for a stable p50/p95 on small batches; tests
# and quick local runs lower it with MODELPRESS_LATENCY_BUDGET_S.
TIME_BUDGET_ENV = "MODELPRESS_LATENCY_BUDGET_S"
DEFAULT_TIME_BUDGET_S = 2.0
SCORE_BATCH = 64  # scoring batch (latency is timed separately at batchSize)


# ValueError: like a method's "this config does not fit the model", the input's fault; the
# pipeline reports these in one line without a traceback.
class TimeLimitExceeded(ValueError):
    """A model run went past the limit set by :func:`time_limit`."""


class NonFiniteResult(ValueError):
    """The model produced NaN or infinity, so no metric of it means anything."""


@dataclass
class _Deadline:
    message: str  # what TimeLimitExceeded says
    ends: float  # time.monotonic()
    options: ort.RunOptions = field(default_factory=ort.RunOptions)
    expired: bool = False

    def expire(self) -> None:
        """Called from the timer thread: stops the run in progress (ORT checks the flag between kernels,
        and inside Loop/Scan/If subgraphs) and every later run with these options."""
        self.expired = True
        self.options.terminate = True


_DEADLINE: ContextVar[_Deadline | None] = ContextVar("modelpress_measure_deadline", default=None)


@contextmanager
def time_limit(seconds: float, message: str) -> Iterator[None]:
    """Every model run in this block (scoring, timing, sensitivity ranking) stops at ``seconds``.

    A run in progress is stopped by ORT's ``RunOptions.terminate``, set from a timer
    thread; the run then raises :class:`TimeLimitExceeded` with ``message``, as does any
    run started after the limit (e.g. when building a candidate used it up).
    """
    deadline = _Deadline(message, time.monotonic() + seconds)
    timer = threading.Timer(seconds, deadline.expire)
    timer.daemon = True
    token = _DEADLINE.set(deadline)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        _DEADLINE.reset(token)


def _run(sess: ort.InferenceSession, names: list[str] | None, feed: dict[str, np.ndarray]) -> list:
    """``sess.run`` under the current :func:`time_limit`, if any."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return sess.run(names, feed)
    if deadline.expired or time.monotonic() >= deadline.ends:
        raise TimeLimitExceeded(deadline.message)
    try:
        return sess.run(names, feed, deadline.options)
    except Exception as e:
        if deadline.expired:
            raise TimeLimitExceeded(deadline.message) from e
        raise


def providers() -> list[str]:
    """CUDA when onnxruntime has it, always with CPU as fallback."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def threads() -> int:
    """Pinned intra-op threads: OMP_NUM_THREADS when set (the job sets it), else all cores."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers())


@dataclass
class Measured:
    metrics: ModelMetrics
    outputs: np.ndarray  # the scored output for every validation sample, in order
    per_sample: np.ndarray  # per_sample() of the outputs: the gate's confidence bound and slices read it
    session: ort.InferenceSession  # kept so a later candidate can be timed side by side


def scored_output(sess: ort.InferenceSession) -> str:
    """The output that metrics read: the first floating-point one (e.g. scikit-learn
    classifiers converted by skl2onnx emit an int64 ``label`` before ``probabilities``)."""
    outputs = sess.get_outputs()
    return next(
        (o.name for o in outputs if o.type in ("tensor(float)", "tensor(float16)", "tensor(double)")), outputs[0].name
    )


def run_outputs(sess: ort.InferenceSession, samples: Samples, batch_size: int = SCORE_BATCH) -> np.ndarray:
    """The scored output of the model for every sample, concatenated along the batch axis."""
    name = scored_output(sess)
    parts = [np.asarray(_run(sess, [name], _feed(sess, batch))[0]) for batch, _ in samples.batches(batch_size)]
    return np.concatenate(parts, axis=0)


def _checked_outputs(sess: ort.InferenceSession, samples: Samples, batch_size: int) -> tuple[np.ndarray, int]:
    """(:func:`run_outputs`, how many samples got NaN or infinity in *any* output)."""
    names = [o.name for o in sess.get_outputs()]
    scored = names.index(scored_output(sess))
    parts, bad = [], 0
    for batch, _ in samples.batches(batch_size):
        results = _run(sess, None, _feed(sess, batch))
        parts.append(np.asarray(results[scored]))
        bad += _nonfinite_samples(results, len(next(iter(batch.values()))))
    return np.concatenate(parts, axis=0), bad


def _nonfinite_samples(results: list, n: int) -> int:
    """Samples of a batch of ``n`` with a non-finite value in a floating-point output.

    An output without the batch axis (e.g. a scalar) that is not finite counts against
    every sample; non-tensor outputs (sequences of maps, as skl2onnx writes) are skipped.
    """
    bad = np.zeros(n, dtype=bool)
    for out in results:
        if not isinstance(out, np.ndarray) or out.dtype.kind not in "fc":
            continue
        finite = np.isfinite(out)
        if finite.all():
            continue
        if out.ndim and out.shape[0] == n:
            bad |= ~finite.reshape(n, -1).all(axis=1)
        else:
            bad[:] = True
    return int(bad.sum())


def measure(
    model: onnx.ModelProto,
    samples: Samples,
    metric: str,
    batch_size: int,
    reference: np.ndarray | None = None,
    timed: bool = True,
) -> Measured:
    """Score, latency, throughput, size and parameters of ``model`` on ``samples``.

    ``reference`` is the baseline's outputs (for cosine, and mse without labels); for
    the baseline itself pass ``None`` and its own outputs are used. Raises
    :class:`NonFiniteResult` when an output or the score is NaN or infinite.
    """
    sess = session(model)
    outputs, bad = _checked_outputs(sess, samples, _score_batch(sess))
    who = "the source model" if reference is None else "the compressed model"
    if bad:
        raise NonFiniteResult(f"{who} produced NaN or infinity on {bad} of {len(samples)} samples")
    reference = outputs if reference is None else reference
    score = score_outputs(metric, outputs, samples.labels, reference)
    if not math.isfinite(score):
        raise NonFiniteResult(f"{who} scores {metric} {score}: its outputs are finite but too large to score")
    p50 = p95 = throughput = None
    if timed:  # candidates are timed by side_by_side() instead
        ((p50, p95, throughput),) = _latency([sess], samples, batch_size)
    size = model.ByteSize()
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    metrics = ModelMetrics(
        score=score, latency_p50_ms=p50, latency_p95_ms=p95, throughput=throughput, size_bytes=size, parameters=params
    )
    return Measured(metrics, outputs, per_sample(metric, outputs, samples.labels, reference), sess)


def side_by_side(
    baseline: Measured, candidate: Measured, samples: Samples, batch_size: int
) -> tuple[ModelMetrics, ModelMetrics]:
    """Baseline and candidate metrics with latency re-timed *interleaved*, run for run.

    On a shared machine, load changes between two separate timings can fake a 10x
    "speedup"; alternating the two sessions on the same batches exposes both to the
    same conditions, so the ratio the gate judges (speedup) is fair.
    """
    (b50, b95, btp), (c50, c95, ctp) = _latency([baseline.session, candidate.session], samples, batch_size)
    base = baseline.metrics.model_copy(update={"latency_p50_ms": b50, "latency_p95_ms": b95, "throughput": btp})
    cand = candidate.metrics.model_copy(update={"latency_p50_ms": c50, "latency_p95_ms": c95, "throughput": ctp})
    return base, cand


def score_outputs(metric: str, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    """The metric of ``outputs``: vs labels (accuracy/top5/f1, mse when labels exist) or vs ``reference``."""
    if metric == "mse":
        target = reference if labels is None else labels.reshape(outputs.shape).astype(np.float64)
        with np.errstate(over="ignore"):  # an overflow gives inf, which measure() reports
            return float(np.mean((outputs.astype(np.float64) - target) ** 2))
    if metric == "f1":
        from sklearn.metrics import f1_score

        return float(f1_score(_needs(labels, metric), per_sample(metric, outputs, labels, reference), average="macro"))
    return float(np.mean(per_sample(metric, outputs, labels, reference)))


def per_sample(metric: str, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> np.ndarray:
    """What each sample contributes to the metric, for the gate's confidence bound and slices.

    For accuracy, top5, cosine and mse the metric is the mean of these values; macro f1 is
    not a mean over samples, so for f1 these are the predicted classes (the gate scores
    f1 on each resample from them and the labels).
    """
    rows = outputs.reshape(len(outputs), -1)
    if metric == "cosine":
        a = rows.astype(np.float64)
        b = reference.reshape(len(reference), -1).astype(np.float64)
        denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)
    if metric == "mse":
        target = reference if labels is None else labels.reshape(outputs.shape)
        with np.errstate(over="ignore"):
            return np.mean((rows.astype(np.float64) - target.reshape(len(rows), -1).astype(np.float64)) ** 2, axis=1)
    if metric == "accuracy":
        return (np.argmax(rows, axis=1) == _needs(labels, metric)).astype(np.float64)
    if metric == "top5":
        top = np.argsort(-rows, axis=1)[:, :5]
        return np.any(top == _needs(labels, metric)[:, None], axis=1).astype(np.float64)
    if metric == "f1":
        _needs(labels, metric)
        return np.argmax(rows, axis=1)
    raise ValueError(f"unknown metric {metric!r}")


def _needs(labels: np.ndarray | None, metric: str) -> np.ndarray:
    if labels is None:
        raise ValueError(f"metric {metric} needs labels (y)")
    return labels


def _latency(
    sessions: list[ort.InferenceSession], samples: Samples, batch_size: int
) -> list[tuple[float, float, float]]:
    """p50/p95 ms per batch of ``batch_size`` and samples/s for each session.

    Sessions take turns on the same batch (round-robin), cycling through the data, so
    with several sessions each sees the same inputs under the same machine load.
    """
    batches = [b for b, _ in samples.batches(batch_size)]  # collated once, cast per session
    feeds = [[_feed(sess, b) for b in batches] for sess in sessions]
    budget = float(os.environ.get(TIME_BUDGET_ENV) or DEFAULT_TIME_BUDGET_S) * len(sessions)
    # Warm up by runs *and* time: the first model measured in a process otherwise pays
    # for thread-pool start-up, page faults and CPU clock ramp-up that later ones do not.
    warm_until = time.perf_counter() + WARMUP_FRACTION * budget
    i = 0
    while i < WARMUP_RUNS or (time.perf_counter() < warm_until and i < MAX_TIMED_RUNS):
        for sess, batches in zip(sessions, feeds, strict=True):
            _run(sess, None, batches[i % len(batches)])
        i += 1
    times: list[list[float]] = [[] for _ in sessions]
    seen = [0] * len(sessions)
    started = time.perf_counter()
    rounds = 0
    while rounds < MAX_TIMED_RUNS and (rounds < MIN_TIMED_RUNS or time.perf_counter() - started < budget):
        for k, (sess, batches) in enumerate(zip(sessions, feeds, strict=True)):
            feed = batches[rounds % len(batches)]
            t0 = time.perf_counter()
            _run(sess, None, feed)  # every output, as a server would
            times[k].append(time.perf_counter() - t0)
            seen[k] += len(next(iter(feed.values())))
        rounds += 1
    out = []
    for k in range(len(sessions)):
        ms = np.array(times[k]) * 1000.0
        out.append(
            (float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(seen[k] / max(sum(times[k]), 1e-12)))
        )
    return out


def _score_batch(sess: ort.InferenceSession) -> int:
    """Score in large batches unless the model's batch axis is fixed."""
    dims = [i.shape[0] if i.shape else None for i in sess.get_inputs()]
    fixed = [d for d in dims if isinstance(d, int)]
    return fixed[0] if fixed else SCORE_BATCH


def _feed(sess: ort.InferenceSession, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast the collated batch to the dtypes the session declares (npz ints vs int64 etc.)."""
    feed = {}
    for spec in sess.get_inputs():
        array = batch[spec.name]
        feed[spec.name] = array.astype(_NP_TYPES.get(spec.type, array.dtype), copy=False)
    return feed


_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def collate_sample(samples: Samples, n: int) -> dict[str, np.ndarray]:
    """A small real batch (first ``n`` samples), e.g. the example input for ONNX export."""
    return collate(samples.features[:n], samples.pad_values)


def hardware() -> str:
    """What the numbers were measured on: CPU model and cores, GPU, ORT providers."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU: {cpu} ({os.cpu_count()} cores, {threads()} threads used)"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    parts.append(f"onnxruntime {ort.__version__}: {', '.join(providers())}")
    return "; ".join(parts)
