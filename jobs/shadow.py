"""Shadow traffic for ``modelpress-onnx``: a candidate artifact judged on live requests.

The runtime serving the stable model also opens the candidate (a second onnxruntime session
in the same process) and, off the request path, runs a sampled fraction of the requests it
answered through the candidate and compares the two answers. Users only ever get the stable
answer: :meth:`ShadowRunner.offer` is O(1) on the request path (a Bernoulli draw and a
``put_nowait`` into a bounded queue; a full queue drops the sample and counts it), and one
daemon worker thread does the rest.

What is compared: the first floating-point output of each model (the first output for
ModelPress's own artifacts; converters such as skl2onnx emit an int64 ``label`` before the
``probabilities``, which carry no distribution), the same rule as the offline gate
(``jobs/measure.py``'s ``scored_output``). A *row* is one class distribution for
classification (the output reshaped to ``(-1, classes)``: argmax and KL over the last axis)
and one batch item for regression and embedding (the output reshaped to ``(batch, -1)``).
Formulas, per row, in float64 (``s`` = stable row, ``c`` = candidate row):

* top-1 agreement (classification): ``argmax(s) == argmax(c)``;
* KL divergence (classification): ``KL(P || Q) = sum_i P_i (ln P_i - ln Q_i)`` in nats, ``P``/``Q``
  the class distributions of ``s``/``c``: the rows themselves (negatives clipped, renormalised)
  when the stable row already is a distribution (all >= 0, sums to 1 within 1e-3), else their
  softmax. The stable row decides for both: a candidate's int8 softmax output summing to 0.87
  is still probabilities, and softmaxing it again would hide the damage. Probabilities are
  floored at 1e-12 before the log so that a class one model gives exactly 0 costs at most
  ~27.6 nats instead of an infinity that would poison the histogram's sum forever;
* cosine (embedding): ``s . c / (|s| |c|)``, 1 when both rows are all zeros, 0 when only one is;
* absolute error (regression, embedding): ``mean_i |c_i - s_i|``;
* relative error (regression): ``sum_i |c_i - s_i| / max(sum_i |s_i|, 1e-12)``.

A sampled request whose candidate run raises, whose candidate output has another shape than
the stable one, or where either output holds NaN or infinity counts ``outcome="failed"``
(logged, rate-limited) and is not compared: those values have no meaningful distance, and a
NaN observed once would make the histogram's ``_sum`` NaN for the life of the process.

Metrics (labels ``model``, ``artifact_digest`` = sha256 of the stable ``model.onnx``,
``shadow_digest`` = sha256 of the candidate's) are the contract the operator's analysis reads:
``modelpress_shadow_requests_total{outcome=compared|dropped|failed}``,
``modelpress_shadow_samples_total`` (rows compared), ``modelpress_shadow_top1_agreements_total``
and the histograms ``modelpress_shadow_{kl_divergence,cosine,abs_error,relative_error}`` (one
observation per compared row; mean = increase(_sum) / increase(_count)).

Imports only what the slim serving image has (numpy, onnxruntime, prometheus-client, kserve).
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from kserve.logging import logger
from prometheus_client import Counter, Histogram

from modelpress.jobs.scoring import FLOAT_TYPES, file_sha256, find_model_file, scored_output

TASKS = ("classification", "regression", "embedding")
OUTCOMES = ("compared", "dropped", "failed")
# A row "already is a distribution" when all >= 0 and it sums to 1 within this.
DISTRIBUTION_TOLERANCE = 1e-3
# Floor of a probability before its log (see the module docstring: bounded KL).
PROBABILITY_FLOOR = 1e-12
# Floor of the denominator of the relative error and of the cosine.
DENOMINATOR_FLOOR = 1e-12
# The candidate runs on one thread: it must not take the stable path's cores (onnxruntime's
# default is one thread per physical core, each of which would contend with stable requests).
CANDIDATE_THREADS = 1
# The worker thread's nice value (Linux): the lowest CPU priority, so that when the cores are
# busy the scheduler runs the stable requests first and the shadow waits (its samples queue up,
# or are dropped and counted), instead of both sharing the cores evenly. Measured with
# benchmarks/shadow.py: it cuts what 10% shadowing adds to the stable p95 several-fold.
WORKER_NICE = 19
# How long the worker lets sampled requests gather before it runs them as one batch: long
# enough that at hundreds of samples a second one run serves dozens of them, short next to any
# analysis interval. A queue that fills meanwhile drops (and counts) the surplus.
BATCH_WINDOW_S = 0.1
# How often the worker looks at the queue while samples gather (a wake-up costs the GIL once).
BATCH_POLL_S = 0.01
# At most one log line per this many seconds about failing candidate runs.
FAILURE_LOG_INTERVAL_S = 60.0

LABELS = ["model", "artifact_digest", "shadow_digest"]
REQUESTS = Counter(
    "modelpress_shadow_requests",
    "Requests sampled for the shadow candidate: compared, dropped (queue full) or failed (candidate error).",
    [*LABELS, "outcome"],
)
SAMPLES = Counter("modelpress_shadow_samples", "Rows compared between the stable model and the candidate.", LABELS)
AGREEMENTS = Counter(
    "modelpress_shadow_top1_agreements",
    "Compared rows whose top-1 class (argmax, last axis) is the same for the candidate (classification).",
    LABELS,
)
KL_DIVERGENCE = Histogram(
    "modelpress_shadow_kl_divergence",
    "Per compared row: KL(stable || candidate) in nats over the class distribution (classification).",
    LABELS,
    buckets=(1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
COSINE = Histogram(
    "modelpress_shadow_cosine",
    "Per compared row: cosine similarity of the candidate's output to the stable one's (embedding).",
    LABELS,
    buckets=(0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0),
)
ABS_ERROR = Histogram(
    "modelpress_shadow_abs_error",
    "Per compared row: mean |candidate - stable| over the row's values (regression, embedding).",
    LABELS,
    buckets=(1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0),
)
RELATIVE_ERROR = Histogram(
    "modelpress_shadow_relative_error",
    "Per compared row: sum |candidate - stable| / sum |stable| (regression).",
    LABELS,
    buckets=(1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
# Which histograms each task observes (and initialises at load).
HISTOGRAMS_BY_TASK = {
    "classification": (KL_DIVERGENCE,),
    "regression": (ABS_ERROR, RELATIVE_ERROR),
    "embedding": (COSINE, ABS_ERROR),
}


class ShadowError(ValueError):
    """A shadow option or candidate the runtime refuses; the message names the flag."""


# --- comparisons: pure numpy, one value per row ---------------------------------------------


def class_rows(output: np.ndarray) -> np.ndarray:
    """Class distributions (or scores) as rows: the last axis is the class axis."""
    if output.ndim < 2:
        raise ValueError(f"a classification output needs a class axis, got shape {list(output.shape)}")
    return np.asarray(output, dtype=np.float64).reshape(-1, output.shape[-1])


def item_rows(output: np.ndarray) -> np.ndarray:
    """One row per batch item (the first axis), all its values flattened."""
    arr = np.asarray(output, dtype=np.float64)
    return arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1)


def is_distribution(rows: np.ndarray) -> np.ndarray:
    """Per row (as a column): all values >= 0 and summing to 1 within DISTRIBUTION_TOLERANCE."""
    return np.all(rows >= 0, axis=-1, keepdims=True) & (
        np.abs(rows.sum(axis=-1, keepdims=True) - 1.0) <= DISTRIBUTION_TOLERANCE
    )


def log_distribution(rows: np.ndarray, as_given: np.ndarray) -> np.ndarray:
    """ln of each row's class distribution: where ``as_given``, the row itself (negatives
    clipped, renormalised), else its softmax (a log-softmax: stable for large logits); floored
    at ln(PROBABILITY_FLOOR)."""
    clipped = np.maximum(rows, 0.0)
    sums = np.maximum(clipped.sum(axis=-1, keepdims=True), PROBABILITY_FLOOR)
    given = np.log(np.maximum(clipped / sums, PROBABILITY_FLOOR))
    shifted = rows - rows.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return np.maximum(np.where(as_given, given, log_softmax), np.log(PROBABILITY_FLOOR))


def top1_agreement(stable: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per row: whether both argmaxes (last axis) are the same class."""
    return np.argmax(stable, axis=-1) == np.argmax(candidate, axis=-1)


def kl_divergence(stable: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per row: KL(stable || candidate) in nats over the class distributions. The stable row
    decides whether the output already is a distribution, for both rows: the candidate is a
    compression of the same model, so its output means the same, and an int8 softmax output
    that sums to 0.87 (as quantizing one does) is still probabilities, not logits to softmax."""
    as_given = is_distribution(stable)
    log_p, log_q = log_distribution(stable, as_given), log_distribution(candidate, as_given)
    return np.maximum(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1), 0.0)  # >= 0 up to rounding


def cosine(stable: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per row: cosine similarity; 1 for two all-zero rows (identical), 0 for one."""
    norms = np.linalg.norm(stable, axis=-1) * np.linalg.norm(candidate, axis=-1)
    both_zero = ~np.any(stable, axis=-1) & ~np.any(candidate, axis=-1)
    value = np.sum(stable * candidate, axis=-1) / np.maximum(norms, DENOMINATOR_FLOOR)
    return np.where(both_zero, 1.0, np.clip(value, -1.0, 1.0))


def abs_error(stable: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per row: mean absolute difference over the row's values."""
    return np.mean(np.abs(candidate - stable), axis=-1)


def relative_error(stable: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per row: sum |candidate - stable| / sum |stable| (denominator floored at 1e-12)."""
    return np.sum(np.abs(candidate - stable), axis=-1) / np.maximum(np.sum(np.abs(stable), axis=-1), DENOMINATOR_FLOOR)


@dataclass(frozen=True)
class Comparison:
    """The per-row values of one compared request (those its task measures; others empty)."""

    rows: int
    agreements: int = 0
    kl_divergence: np.ndarray | None = None
    cosine: np.ndarray | None = None
    abs_error: np.ndarray | None = None
    relative_error: np.ndarray | None = None


def compare(task: str, stable: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Compare one request's outputs for ``task``; ValueError for outputs that cannot be
    compared (other shapes, NaN or infinity)."""
    if stable.shape != candidate.shape:
        raise ValueError(f"candidate output shape {list(candidate.shape)} != stable {list(stable.shape)}")
    if not (np.all(np.isfinite(stable)) and np.all(np.isfinite(candidate))):
        raise ValueError(
            "NaN or infinity in the " + ("stable" if not np.all(np.isfinite(stable)) else "candidate") + " output"
        )
    if task == "classification":
        s, c = class_rows(stable), class_rows(candidate)
        return Comparison(len(s), int(top1_agreement(s, c).sum()), kl_divergence=kl_divergence(s, c))
    s, c = item_rows(stable), item_rows(candidate)
    if task == "regression":
        return Comparison(len(s), abs_error=abs_error(s, c), relative_error=relative_error(s, c))
    if task == "embedding":
        return Comparison(len(s), cosine=cosine(s, c), abs_error=abs_error(s, c))
    raise ValueError(f"unknown task {task!r}")


# --- the runner ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadowConfig:
    """The --shadow_* flags, checked when parsed."""

    model_dir: Path
    task: str
    fraction: float = 0.1
    queue_size: int = 64
    # TEST/CHAOS ONLY: latency added before each candidate run (env MODELPRESS_CHAOS_SHADOW_LATENCY_MS),
    # so a test can fill the queue and see drops counted while the stable latency stays put.
    chaos_latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ShadowError(
                f"--shadow_task must be one of {', '.join(TASKS)} with --shadow_model_dir, got {self.task!r}"
            )
        if not 0.0 < self.fraction <= 1.0:
            raise ShadowError(f"--shadow_fraction must be within (0, 1], got {self.fraction}")
        if not 1 <= self.queue_size <= 1_000_000:
            raise ShadowError(f"--shadow_queue must be within [1, 1000000], got {self.queue_size}")
        if self.chaos_latency_ms < 0:
            raise ShadowError(f"MODELPRESS_CHAOS_SHADOW_LATENCY_MS must be >= 0, got {self.chaos_latency_ms}")

    @classmethod
    def from_flags(
        cls, model_dir: Path | None, task: str | None, fraction: float, queue_size: int
    ) -> ShadowConfig | None:
        """The config the --shadow_* flags ask for (None without --shadow_model_dir); its
        candidate file must exist. ShadowError, one line naming the flag, otherwise."""
        if model_dir is None:
            if task is not None:
                raise ShadowError("--shadow_task needs --shadow_model_dir (the candidate to shadow)")
            return None
        if task is None:
            raise ShadowError(f"--shadow_model_dir needs --shadow_task ({' | '.join(TASKS)})")
        config = cls(Path(model_dir), task, fraction, queue_size, chaos_latency_from_env())
        config.model_file()
        return config

    def model_file(self) -> Path:
        """The candidate's ONNX file (the runtime's layouts), or a one-line error naming --shadow_model_dir."""
        try:
            return find_model_file(self.model_dir, "--shadow_model_dir")
        except FileNotFoundError as e:
            raise ShadowError(f"--shadow_model_dir: {e}") from None


def chaos_latency_from_env() -> float:
    """The test-only shadow latency (ms) from MODELPRESS_CHAOS_SHADOW_LATENCY_MS; 0 when unset."""
    raw = os.environ.get("MODELPRESS_CHAOS_SHADOW_LATENCY_MS", "") or "0"
    try:
        return float(raw)
    except ValueError:
        raise ShadowError(f"MODELPRESS_CHAOS_SHADOW_LATENCY_MS must be a number of ms, got {raw!r}") from None


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (WORKER_NICE). Linux schedules threads as
    tasks, so PRIO_PROCESS with the thread's native id renices this thread alone; raising one's
    own nice value needs no privilege. Elsewhere (or if refused) the thread keeps its priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except (AttributeError, OSError) as e:  # no setpriority on this platform, or a sandbox refuses it
        logger.info("shadow worker keeps its CPU priority: %s", e)


# One sampled request: its input feed and the stable model's compared output.
Sample = tuple[dict[str, np.ndarray], np.ndarray]


def batch_key(sample: Sample) -> tuple | None:
    """What samples must share to be concatenated along the batch axis (names, dtypes and the
    other dimensions of every input and of the stable output); None when one is a scalar."""
    feed, stable = sample
    if stable.ndim == 0 or any(a.ndim == 0 for a in feed.values()):
        return None
    inputs = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(feed.items()))
    return inputs, stable.dtype.str, stable.shape[1:]


def dynamic_batch(session: ort.InferenceSession) -> bool:
    """Whether queued samples can run through ``session`` as one batch: every input and the
    compared output have a symbolic (not fixed) first dimension."""
    shapes = [i.shape for i in session.get_inputs()] + [compared_output(session)[1].shape]
    return all(shape and not isinstance(shape[0], int) for shape in shapes)


def compared_output(session: ort.InferenceSession) -> tuple[int, ort.NodeArg]:
    """(index, output) of the output compared: the one batch scoring scores (scoring.scored_output)."""
    index = scored_output(session)
    return index, session.get_outputs()[index]


class ShadowRunner:
    """The candidate session, the bounded queue and the worker thread for one served model."""

    def __init__(
        self,
        config: ShadowConfig,
        model_name: str,
        stable_digest: str,
        stable: ort.InferenceSession,
        providers: Sequence[str],
    ) -> None:
        """Open the candidate and check it fits the stable model (ShadowError naming
        --shadow_model_dir otherwise); start the worker."""
        self.config = config
        path = config.model_file()
        self.digest = file_sha256(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = CANDIDATE_THREADS
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as e:  # a corrupt or unsupported file: hostile input, one line
            raise ShadowError(f"--shadow_model_dir: onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from None
        self._check_fits(stable)
        self._stable_index, _ = compared_output(stable)
        self._output = compared_output(self.session)[1].name
        self._dynamic_batch = dynamic_batch(self.session)

        labels = (model_name, stable_digest, self.digest)
        self._outcomes = {o: REQUESTS.labels(*labels, o) for o in OUTCOMES}
        self._samples = SAMPLES.labels(*labels)
        self._agreements = AGREEMENTS.labels(*labels) if config.task == "classification" else None
        # Series exist (at 0) from load on, so increase() counts the first samples too.
        self._histograms = {h: h.labels(*labels) for h in HISTOGRAMS_BY_TASK[config.task]}

        self._rng = random.Random()
        self._queue: queue.Queue[Sample | None] = queue.Queue(config.queue_size)
        self._stopping = threading.Event()
        self._last_failure_log = -FAILURE_LOG_INTERVAL_S
        self._failures_unlogged = 0
        self._worker = threading.Thread(target=self._work, name="modelpress-shadow", daemon=True)
        self._worker.start()

    def _check_fits(self, stable: ort.InferenceSession) -> None:
        """Same input names and types; compared outputs of the same shape per row."""
        want = {i.name: i.type for i in stable.get_inputs()}
        have = {i.name: i.type for i in self.session.get_inputs()}
        if want != have:
            raise ShadowError(
                f"--shadow_model_dir: the candidate takes inputs {have}, the stable model {want}: "
                "a shadow candidate must take the same inputs"
            )
        s, c = compared_output(stable)[1], compared_output(self.session)[1]
        if (s.type in FLOAT_TYPES) != (c.type in FLOAT_TYPES):
            raise ShadowError(
                f"--shadow_model_dir: the candidate's compared output {c.name!r} is {c.type}, the stable model's "
                f"{s.name!r} {s.type}: a shadow candidate must give the same kind of output"
            )
        per_row_s, per_row_c = list(s.shape[1:]), list(c.shape[1:])
        fixed = all(
            a == b for a, b in zip(per_row_s, per_row_c, strict=False) if isinstance(a, int) and isinstance(b, int)
        )
        if len(s.shape) != len(c.shape) or not fixed:
            raise ShadowError(
                f"--shadow_model_dir: the candidate's output {c.name!r} has shape {c.shape}, the stable model's "
                f"{s.name!r} {s.shape}: a shadow candidate must give the same shape per row"
            )
        if self.config.task == "classification" and len(s.shape) < 2:
            raise ShadowError(
                f"--shadow_model_dir: --shadow_task classification needs a class axis, output {s.name!r} has shape {s.shape}"
            )

    def offer(self, feed: dict[str, np.ndarray], stable_outputs: Sequence[np.ndarray]) -> None:
        """On the request path, right after the stable run: maybe queue this request for the
        candidate. O(1), never blocks, never raises. The caller hands the arrays over: it must
        not modify them afterwards (they are compared later, on the worker thread)."""
        try:
            if self._rng.random() >= self.config.fraction:
                return
            if self._stopping.is_set():
                self._outcomes["dropped"].inc()
                return
            self._queue.put_nowait((feed, stable_outputs[self._stable_index]))
        except queue.Full:
            self._outcomes["dropped"].inc()
        except Exception as e:  # the user's response must never depend on the shadow
            self._failed(f"could not queue a request: {e}")

    def _work(self) -> None:
        lower_priority()
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            # Let samples gather for a moment, then take all of them (bounded by the queue): one
            # candidate run and one comparison for many samples holds the GIL, which the request
            # path shares, once instead of once per sample, so few user requests ever wait on it.
            # The queue half full ends the wait early, so a burst is taken before it must drop.
            deadline = time.monotonic() + BATCH_WINDOW_S
            while time.monotonic() < deadline and self._queue.qsize() < self.config.queue_size // 2:
                if self._stopping.wait(BATCH_POLL_S):
                    return
            batch = [item]
            while len(batch) < self.config.queue_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    return
                batch.append(nxt)
            for group in self._groups(batch):
                self._compare(group)

    def _groups(self, batch: list[Sample]) -> list[list[Sample]]:
        """Consecutive samples that can run as one batch: the candidate's batch axis is dynamic
        and their inputs and stable outputs agree on every other dimension and dtype."""
        groups: list[list[Sample]] = []
        last: tuple | None = None
        for item in batch:
            key = batch_key(item) if self._dynamic_batch else None
            if key is not None and key == last:
                groups[-1].append(item)
            else:
                groups.append([item])
            last = key
        return groups

    def _compare(self, group: list[Sample]) -> None:
        """Run the candidate on ``group`` (one run when it is several samples) and record the
        comparison; when a joint run fails, each sample is tried alone, so one bad sample
        counts as one failure and its neighbours are still compared."""
        try:
            if len(group) == 1:
                feed, stable = group[0]
            else:
                feed = {n: np.concatenate([f[n] for f, _ in group]) for n in group[0][0]}
                stable = np.concatenate([s for _, s in group])
            if self.config.chaos_latency_ms:
                time.sleep(self.config.chaos_latency_ms * len(group) / 1000.0)
            (candidate,) = self.session.run([self._output], feed)
            self._record(compare(self.config.task, np.asarray(stable), np.asarray(candidate)), len(group))
        except Exception as e:  # the candidate's failure is a measurement, not a crash
            if len(group) > 1:  # one bad sample must not take its neighbours with it
                for item in group:
                    self._compare([item])
                return
            self._failed(str(e).splitlines()[0] if str(e) else type(e).__name__)

    def _record(self, result: Comparison, requests: int = 1) -> None:
        # "compared" last: a scrape that sees a request compared sees its rows counted too.
        self._samples.inc(result.rows)
        if self._agreements is not None:
            self._agreements.inc(result.agreements)
        for histogram, values in (
            (KL_DIVERGENCE, result.kl_divergence),
            (COSINE, result.cosine),
            (ABS_ERROR, result.abs_error),
            (RELATIVE_ERROR, result.relative_error),
        ):
            if values is not None:
                child = self._histograms[histogram]
                for value in values.tolist():
                    child.observe(value)
        self._outcomes["compared"].inc(requests)

    def _failed(self, reason: str) -> None:
        """Count a failed sample; log it, at most once per FAILURE_LOG_INTERVAL_S (a candidate
        that fails on every input must not flood the log). Called from the worker and, rarely,
        the request path: a race between them at worst logs one line more or less."""
        self._outcomes["failed"].inc()
        now = time.monotonic()
        if now - self._last_failure_log < FAILURE_LOG_INTERVAL_S:
            self._failures_unlogged += 1
            return
        logger.warning(
            "shadow candidate %s failed on a sampled request (%d more since the last report): %s",
            self.digest[:12],
            self._failures_unlogged,
            reason,
        )
        self._last_failure_log, self._failures_unlogged = now, 0

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker: queued samples are abandoned (a shutdown needs no more shadow
        numbers); waits at most ``timeout`` s for a candidate run in progress (the thread is a
        daemon, so even a stuck run never holds the process)."""
        self._stopping.set()
        try:
            self._queue.put_nowait(None)  # wakes an idle worker
        except queue.Full:
            pass  # a busy worker sees _stopping after its current item
        self._worker.join(timeout)
