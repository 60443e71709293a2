"""``modelpress-onnx``: the KServe ModelServer runtime that serves a ModelPress artifact.

It is a ``kserve.Model`` over an onnxruntime session, so KServe's own ModelServer gives
us the V1 and V2 (Open Inference) protocols, binary tensors, model metadata,
readiness/liveness and ``/metrics`` for free; this module only adds what KServe lacks
for an analysed canary:

* ``modelpress_inference_requests_total{model,artifact_digest,code}`` and
  ``modelpress_inference_latency_seconds{model,artifact_digest}`` (sub-millisecond
  buckets). ``artifact_digest`` is the sha256 of the served ``model.onnx``, so stable
  and canary can be told apart in Prometheus whatever the deployment mode.
* Shadow traffic (``--shadow_model_dir``, ``--shadow_fraction``, ``--shadow_task``,
  ``--shadow_queue``): a candidate artifact run off the request path on a sample of the
  requests and compared with the stable answers (``jobs/shadow.py``, its metrics).
* Prediction ids and feedback (``--feedback_ids``): every successful prediction is answered
  with an id (header ``x-prediction-id``; V2 also the response parameter ``prediction_id``),
  counted in ``modelpress_predictions_total``; outcomes posted to
  ``POST /v1/models/<name>/feedback`` are counted for the digest that served the id
  (``jobs/feedback.py``).
* Chaos options, **for tests of bad canaries only**: ``--chaos_error_rate`` (fraction of
  requests answered with HTTP 500) and ``--chaos_latency_ms`` (added to every request),
  or the env vars ``MODELPRESS_CHAOS_ERROR_RATE`` / ``MODELPRESS_CHAOS_LATENCY_MS``.

Serves ``<model_dir>/model/1/model.onnx`` (KServe's Triton model-repository layout, the
ModelPress artifact layout) or a bare ``<model_dir>/model.onnx``.

Imports nothing of the compression stack (torch, transformers, onnx): it runs in the
slim ``serving`` image (Dockerfile) as well as in the job image.

    python -m modelpress.jobs.serving --model_dir DIR --model_name NAME [--http_port N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server as kserve_model_server
from kserve.errors import InferenceError, InvalidInput
from kserve.logging import logger
from kserve.model import InferenceVerb
from prometheus_client import Counter, Histogram

from modelpress.jobs.feedback import DEFAULT_FEEDBACK_IDS, PredictionBook, check_capacity, feedback_router
from modelpress.jobs.scoring import (  # noqa: F401 - shared with batch scoring; MODEL_* re-exported
    MODEL_CANDIDATES,
    MODEL_RELPATH,
    ORT_TO_NUMPY,
    Scorer,
    ScoringInputError,
    choose_providers,
    file_sha256,
    find_model_file,
)
from modelpress.jobs.shadow import TASKS as SHADOW_TASKS
from modelpress.jobs.shadow import ShadowConfig, ShadowError, ShadowRunner

# Sub-millisecond resolution matters: a small int8 MLP answers in ~100 µs, and the
# canary's p95 is compared to the stable's p95 as a ratio.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
DIGEST_LABEL = "artifact_digest"
REQUESTS_METRIC = "modelpress_inference_requests_total"
LATENCY_METRIC = "modelpress_inference_latency_seconds"

REQUESTS = Counter(
    REQUESTS_METRIC.removesuffix("_total"),
    "Inference requests handled by the modelpress-onnx runtime, by HTTP status code.",
    ["model", DIGEST_LABEL, "code"],
)
LATENCY = Histogram(
    LATENCY_METRIC,
    "End-to-end model latency (preprocess + predict + postprocess) in seconds.",
    ["model", DIGEST_LABEL],
    buckets=LATENCY_BUCKETS,
)

# onnxruntime type strings -> Open Inference Protocol datatypes.
ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class Chaos:
    """Fault injection for tests of bad canaries. Never set these in production."""

    error_rate: float = 0.0
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"chaos error rate must be within [0, 1], got {self.error_rate}")
        if self.latency_ms < 0:
            raise ValueError(f"chaos latency must be >= 0 ms, got {self.latency_ms}")

    @classmethod
    def from_env(cls) -> Chaos:
        return cls(
            error_rate=float(os.environ.get("MODELPRESS_CHAOS_ERROR_RATE", "0") or 0),
            latency_ms=float(os.environ.get("MODELPRESS_CHAOS_LATENCY_MS", "0") or 0),
        )


def _shape(dims: list[Any]) -> list[int]:
    """Symbolic/unknown dimensions are -1 in the V2 metadata."""
    return [d if isinstance(d, int) else -1 for d in dims]


class OnnxModel(Model):
    """One ONNX artifact behind KServe's data plane (V1 and V2 protocols)."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        device: str = "auto",
        intra_op_threads: int = 0,
        chaos: Chaos | None = None,
        shadow: ShadowConfig | None = None,
        feedback_ids: int = DEFAULT_FEEDBACK_IDS,
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.chaos = chaos or Chaos()
        self.shadow_config = shadow
        self.feedback_ids = feedback_ids
        self.book: PredictionBook | None = None  # the prediction ids served; set by load()
        self.shadow: ShadowRunner | None = None
        self.digest = ""
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        path = find_model_file(self.model_dir)
        self.digest = file_sha256(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        self.session = ort.InferenceSession(str(path), options, providers=choose_providers(self.device))
        self._scorer = Scorer(self.session, self.name)
        self._inputs = self._scorer.inputs
        self._outputs = self._scorer.outputs
        self._output_types = {o.name: ORT_TO_V2.get(o.type, o.type) for o in self.session.get_outputs()}
        self._warm_up()
        if self.shadow_config is not None:  # after the warm-up: it must not feed the shadow
            self.shadow = ShadowRunner(
                self.shadow_config, self.name, self.digest, self.session, self.session.get_providers()
            )
        # Series exist (at 0) from the first scrape on, so Prometheus' increase()/rate()
        # count the very first requests too instead of taking them as the starting value.
        # The labelled children are kept: a label lookup per request costs a lock and a dict.
        self._latency = LATENCY.labels(self.name, self.digest)
        self._requests = {code: REQUESTS.labels(self.name, self.digest, code) for code in ("200", "400", "500")}
        self.book = PredictionBook(self.name, self.digest, self.feedback_ids)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """KServe's unload on shutdown: stop the shadow worker too."""
        if self.shadow is not None:
            self.shadow.close()
        super().stop()

    @property
    def _session(self) -> ort.InferenceSession:
        """The session :meth:`load` opened; KServe routes no request to a model before it is ready."""
        if self.session is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self.session

    @property
    def _book(self) -> PredictionBook:
        """The prediction ids :meth:`load` began to keep (same contract as :attr:`_session`)."""
        if self.book is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self.book

    def _warm_up(self, runs: int = 3) -> None:
        """A few inferences on zeros before reporting ready, so the first real requests
        (the ones a canary analysis judges first) do not pay for lazy initialisation."""
        feed: dict[str, np.ndarray] = {}
        for i in self._session.get_inputs():
            dtype = ORT_TO_NUMPY.get(i.type)
            if dtype is None:  # e.g. string inputs: no meaningful zeros
                return
            feed[i.name] = np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], dtype=dtype)
        try:
            for _ in range(runs):
                self._session.run(self._outputs, feed)
        except Exception as e:  # a model that rejects zeros still serves real input
            logger.warning("warm-up skipped for %s: %s", self.name, e)

    def get_input_types(self) -> list[dict]:
        return [
            {"name": i.name, "datatype": ORT_TO_V2.get(i.type, i.type), "shape": _shape(i.shape)}
            for i in self._session.get_inputs()
        ]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": o.name, "datatype": ORT_TO_V2.get(o.type, o.type), "shape": _shape(o.shape)}
            for o in self._session.get_outputs()
        ]

    async def __call__(self, body, headers=None, verb: InferenceVerb = InferenceVerb.PREDICT):
        """KServe's call path, plus our digest-labelled counter/histogram and chaos.

        A predict goes straight to :meth:`predict`: KServe's ``Model.__call__`` would only add
        identity pre/postprocess hooks, three label lookups into its own
        ``request_*_seconds`` histograms and a latency log line — about 40 µs a request,
        more than the model itself takes for a small MLP (benchmarks/serve.py). Our own
        histogram measures the same span, labelled by digest. Other verbs keep KServe's path."""
        start = time.perf_counter()
        code = "200"
        try:
            if self.chaos.latency_ms:
                await asyncio.sleep(self.chaos.latency_ms / 1000.0)
            if self.chaos.error_rate and random.random() < self.chaos.error_rate:
                raise InferenceError("injected failure (chaos option MODELPRESS_CHAOS_ERROR_RATE / --chaos_error_rate)")
            if verb is InferenceVerb.PREDICT:
                # The id is stamped after predict: a failed request gets none and is not counted.
                return self._book.stamp(self.predict(body, headers))
            return await super().__call__(body, headers, verb)
        except InvalidInput:
            code = "400"
            raise
        except Exception:
            code = "500"
            raise
        finally:
            self._latency.observe(time.perf_counter() - start)
            self._requests[code].inc()

    def _feed(self, named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scorer.feed (the casts batch scoring does too); its input errors are the client's: HTTP 400."""
        try:
            return self._scorer.feed(named)
        except ScoringInputError as e:
            raise InvalidInput(str(e)) from e

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            results = self._scorer.run(feed)
        except ScoringInputError as e:
            raise InvalidInput(str(e)) from e
        if self.shadow is not None:  # O(1), never raises: see ShadowRunner.offer
            self.shadow.offer(feed, results)
        return results

    def _v1_inputs(self, payload: dict) -> dict[str, np.ndarray]:
        """V1: ``{"instances": [...]}``; each instance is a tensor (one-input models) or
        a dict of input name -> tensor."""
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('V1 request needs a non-empty "instances" list')
        if isinstance(instances[0], dict):
            return {n: np.asarray([inst.get(n) for inst in instances]) for n in instances[0]}
        if len(self._inputs) != 1:
            raise InvalidInput(
                f"model {self.name!r} has inputs {list(self._inputs)}: send each instance as a dict of them"
            )
        return {next(iter(self._inputs)): np.asarray(instances)}

    def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            feed = self._feed({i.name: i.as_numpy() for i in payload.inputs})
            results = self._run(feed)
            outputs = []
            for name, arr in zip(self._outputs, results, strict=True):
                out = InferOutput(name=name, shape=list(arr.shape), datatype=self._output_types[name])
                out.set_data_from_numpy(arr, binary_data=payload.use_binary_outputs)
                outputs.append(out)
            return InferResponse(
                response_id=payload.id or "",
                model_name=self.name,
                infer_outputs=outputs,
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )
        if not isinstance(payload, dict):
            raise InvalidInput(f"unsupported request body of type {type(payload).__name__}")
        results = self._run(self._feed(self._v1_inputs(payload)))
        if len(results) == 1:
            return {"predictions": results[0].tolist()}
        # Several outputs: one dict per instance, as KServe's V1 convention allows.
        return {
            "predictions": [
                {name: arr[i].tolist() for name, arr in zip(self._outputs, results, strict=True)}
                for i in range(len(results[0]))
            ]
        }


def serve(
    model_dir: Path,
    model_name: str,
    http_port: int = 8080,
    grpc_port: int | None = None,
    device: str = "auto",
    intra_op_threads: int = 0,
    chaos: Chaos | None = None,
    shadow: ShadowConfig | None = None,
    request_logs: bool = False,
    feedback_ids: int = DEFAULT_FEEDBACK_IDS,
) -> None:
    """Load the artifact (and the shadow candidate, if any) and serve it until SIGTERM (blocks).
    gRPC only when a port is given; see :func:`quiet_request_logs` for ``request_logs``."""
    model = OnnxModel(
        model_name, Path(model_dir), device, intra_op_threads, chaos or Chaos.from_env(), shadow, feedback_ids
    )
    model.load()
    server = ModelServer(
        http_port=http_port,
        grpc_port=grpc_port or kserve_model_server.args.grpc_port,
        enable_grpc=grpc_port is not None,
    )
    if not request_logs:
        quiet_request_logs()  # after ModelServer(): it (re)configures logging
    # KServe's extension point for extra REST routes: its module-level FastAPI app, which
    # RESTServer.create_application imports and extends when start() runs. Ours go first.
    kserve_model_server.app.include_router(feedback_router({model.name: model._book}))
    server.start([model])


# Loggers that write a line for every request: uvicorn's access log, and KServe's timing
# middleware and latency log (both on "kserve.trace").
REQUEST_LOGGERS = ("uvicorn.access", "kserve.trace")


def quiet_request_logs() -> None:
    """Keep the per-request log lines out (warnings and errors still pass).

    Formatting and writing one costs 30-60 µs on a 2-core machine, and KServe writes three
    per request — a third of the runtime's overhead for a small model (benchmarks/serve.py).
    Every request is counted and timed in Prometheus instead; ``--request_logs true``
    restores the lines."""
    for name in REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    # KServe's own flags (workers, logging, ...) come along via its parent parser.
    parser = argparse.ArgumentParser(
        prog="python -m modelpress.jobs.serving",
        description="modelpress-onnx: serve a ModelPress ONNX artifact with KServe's ModelServer.",
        parents=[kserve_model_server.parser],
    )
    parser.add_argument("--model_dir", required=True, type=Path, help="artifact dir (e.g. /mnt/models)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--intra_op_threads", type=int, default=0, help="onnxruntime threads; 0 = its default")
    chaos = Chaos.from_env()
    parser.add_argument(
        "--chaos_error_rate", type=float, default=chaos.error_rate,
        help="TEST/CHAOS ONLY: fraction of requests answered with HTTP 500 (env MODELPRESS_CHAOS_ERROR_RATE)",
    )  # fmt: skip
    parser.add_argument(
        "--chaos_latency_ms", type=float, default=chaos.latency_ms,
        help="TEST/CHAOS ONLY: latency added to every request (env MODELPRESS_CHAOS_LATENCY_MS)",
    )  # fmt: skip
    # Shadow traffic (jobs/shadow.py); the chaos for it is env MODELPRESS_CHAOS_SHADOW_LATENCY_MS only.
    parser.add_argument("--shadow_model_dir", type=Path, help="candidate artifact dir to shadow (same layouts)")
    parser.add_argument("--shadow_fraction", type=float, default=0.1, help="share of requests shadowed, (0, 1]")
    parser.add_argument("--shadow_task", choices=SHADOW_TASKS, help="how the answers are compared")
    parser.add_argument("--shadow_queue", type=int, default=64, help="most requests waiting for the candidate")
    parser.add_argument(
        "--feedback_ids", type=int, default=DEFAULT_FEEDBACK_IDS,
        help="prediction ids remembered for feedback attribution (oldest forgotten first)",
    )  # fmt: skip
    parser.add_argument(
        "--request_logs", choices=["true", "false"], default="false",
        help="log a line per request (uvicorn access log, KServe timing); off: Prometheus counts and times them",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # bad options and a wrong directory get one readable line, not a traceback
        chaos = Chaos(args.chaos_error_rate, args.chaos_latency_ms)
        find_model_file(args.model_dir)
        check_capacity(args.feedback_ids)
        shadow = ShadowConfig.from_flags(
            args.shadow_model_dir, args.shadow_task, args.shadow_fraction, args.shadow_queue
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"modelpress-onnx: {e}", file=sys.stderr)
        return 1
    try:
        serve(
            args.model_dir,
            args.model_name,
            http_port=args.http_port,
            grpc_port=args.grpc_port if args.enable_grpc else None,
            device=args.device,
            intra_op_threads=args.intra_op_threads,
            chaos=chaos,
            shadow=shadow,
            request_logs=args.request_logs == "true",
            feedback_ids=args.feedback_ids,
        )
    except ShadowError as e:  # a candidate that does not fit the stable model, found at load
        print(f"modelpress-onnx: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
