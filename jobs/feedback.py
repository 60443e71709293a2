"""Prediction ids and the feedback endpoint of the ``modelpress-onnx`` runtime.

A model is judged on the business outcome it moves (a click, a purchase, revenue), and that
outcome arrives after the answer, often much later. So every online answer carries a
**prediction id** (HTTP header ``x-prediction-id``; for the V2 protocol also the response
parameter ``prediction_id``, which gRPC clients get too), one per request — per-row ids are
the batch path's (``modelpress predict``). The runtime remembers which artifact served each
id, in a bounded map (``--feedback_ids``, oldest forgotten first), so that an outcome posted
later to ``POST /v1/models/<name>/feedback`` is counted for the artifact digest that earned
it. An id the runtime does not remember (never served here, forgotten, or already given its
outcome) is counted as unattributed: never guessed.

Outcomes are one per prediction (a second one for the same id is unattributed: a retried
delivery must not count twice in a two-proportion test) and non-negative (a boolean, counted
as 0/1, or a finite number in ``[0, MAX_OUTCOME]``): the sums are exported as Prometheus
counters, whose windowed ``increase()`` is only right while they never go down.

Metrics (docs/metrics.md): ``modelpress_predictions_total{model,artifact_digest}``,
``modelpress_feedback_total{model,artifact_digest,kind}``, the summaries
``modelpress_feedback_outcome`` and ``modelpress_feedback_outcome_squares`` (their ``_sum``
series are the sum of outcomes and of squared outcomes: the moments the canary analysis
needs for a mean's test), ``modelpress_feedback_unattributed_total{model}``.

Each replica remembers only the ids it served (and each KServe worker process its own): an
outcome that reaches another replica than the one that answered is unattributed.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from kserve import InferResponse
from prometheus_client import Counter, Summary
from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

PREDICTION_ID_HEADER = "x-prediction-id"
PREDICTION_ID_PARAMETER = "prediction_id"
DIGEST_LABEL = "artifact_digest"  # the same label as jobs/serving.py's request metrics

DEFAULT_FEEDBACK_IDS = 100_000  # ~17 MB of ids; at 1000 requests/s, the last ~100 s
MAX_FEEDBACK_IDS = 10_000_000
MAX_ITEMS = 1000  # outcomes in one feedback request
MAX_BODY_BYTES = 256 * 1024  # MAX_ITEMS items with ids of MAX_ID_CHARS fit
MAX_ID_CHARS = 128
# Bounded so that the squares (second moment) stay finite in a float64 counter.
MAX_OUTCOME = 1e12

PREDICTIONS = Counter(
    "modelpress_predictions",
    "Successful predictions, each answered with a prediction id.",
    ["model", DIGEST_LABEL],
)
FEEDBACK = Counter(
    "modelpress_feedback",
    "Outcomes attributed to the artifact that served the prediction, by kind (binary or numeric).",
    ["model", DIGEST_LABEL, "kind"],
)
OUTCOME = Summary(
    "modelpress_feedback_outcome",
    "Attributed outcomes (binary as 0/1): _sum is their sum, _count their number.",
    ["model", DIGEST_LABEL],
)
OUTCOME_SQUARES = Summary(
    "modelpress_feedback_outcome_squares",
    "Squares of the attributed outcomes: _sum is the second moment a mean's test needs.",
    ["model", DIGEST_LABEL],
)
UNATTRIBUTED = Counter(
    "modelpress_feedback_unattributed",
    "Outcomes whose prediction id this replica does not remember (unknown, forgotten or already answered).",
    ["model"],
)


class FeedbackItem(BaseModel):
    """One outcome. Strict: ``"1"`` is not a number and ``1`` is not a boolean."""

    model_config = ConfigDict(strict=True, extra="forbid")

    predictionId: str = Field(min_length=1, max_length=MAX_ID_CHARS)  # noqa: N815 (the wire name)
    outcome: StrictBool | Annotated[float, Field(ge=0, le=MAX_OUTCOME, allow_inf_nan=False)]


ONE_ITEM = TypeAdapter(FeedbackItem)
ITEMS = TypeAdapter(Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_ITEMS)])


class FeedbackError(ValueError):
    """A feedback body we refuse; its message is one line for the HTTP 400 answer."""


def parse_feedback(body: bytes) -> list[FeedbackItem]:
    """The items of a feedback body (one object, or an array of them), or a one-line
    :class:`FeedbackError` naming the field at fault."""
    if len(body) > MAX_BODY_BYTES:
        raise FeedbackError(f"feedback body is over {MAX_BODY_BYTES} bytes")
    # Two adapters chosen by the JSON type rather than one union: a union's errors name
    # both branches, and only the one the body meant is worth a line.
    is_list = body.lstrip()[:1] == b"["
    try:
        return ITEMS.validate_json(body) if is_list else [ONE_ITEM.validate_json(body)]
    except ValidationError as e:
        raise FeedbackError(one_line(e, is_list)) from None


def one_line(error: ValidationError, is_list: bool) -> str:
    """pydantic's first problem as ``feedback<where>: <what>`` (``where`` like ``[3].outcome``)."""
    first = error.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return f"feedback body is not JSON: {first['msg']}"
    loc, message = first["loc"], first["msg"]
    if "outcome" in loc:  # a union: pydantic's line names one branch; say what the field takes
        loc = loc[: loc.index("outcome") + 1]
        message = f"must be true, false or a finite number in [0, {MAX_OUTCOME:g}]"
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    return f"feedback{where or ' body'}: {message}"


class PredictionBook:
    """The prediction ids one model served and the digest of the artifact that served each.

    Bounded: at most ``capacity`` ids, the oldest forgotten first. An :class:`OrderedDict` used
    as a FIFO is all it takes — ids leave on their (single) feedback, so the oldest entry is
    also the least recently used one."""

    def __init__(self, model: str, digest: str, capacity: int = DEFAULT_FEEDBACK_IDS) -> None:
        check_capacity(capacity)
        self.model = model
        self.digest = digest
        self.capacity = capacity
        self._ids: OrderedDict[str, str] = OrderedDict()
        # The event loop is the only caller today; the lock keeps the bound true if a
        # predict ever runs in KServe's thread pool.
        self._lock = threading.Lock()
        # Children looked up once: a label lookup per request costs a lock and a dict.
        self._predictions = PREDICTIONS.labels(model, digest)
        self._unattributed = UNATTRIBUTED.labels(model)
        FEEDBACK.labels(model, digest, "binary")
        FEEDBACK.labels(model, digest, "numeric")
        OUTCOME.labels(model, digest)
        OUTCOME_SQUARES.labels(model, digest)

    def __len__(self) -> int:
        return len(self._ids)

    def new_id(self) -> str:
        """A fresh prediction id, remembered as served by this book's artifact, and counted."""
        # 128 bits from the OS's CSPRNG, 32 hex digits like a uuid4's hex (the batch path's ids):
        # unguessable, so nobody posts outcomes for predictions they never saw; uuid.uuid4()
        # costs 5x more (2.6 µs against 0.5 µs) for the same randomness.
        prediction_id = os.urandom(16).hex()
        with self._lock:
            self._ids[prediction_id] = self.digest
            if len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
        self._predictions.inc()
        return prediction_id

    def stamp(self, response: Any) -> tuple[Any, dict[str, str]]:
        """KServe's ``(response, response headers)`` for a successful prediction, with its id
        in the header and, for a V2 :class:`InferResponse`, in the response parameters."""
        prediction_id = self.new_id()
        if isinstance(response, InferResponse):
            if response.parameters is None:
                response.parameters = {}
            response.parameters[PREDICTION_ID_PARAMETER] = prediction_id
        return response, {PREDICTION_ID_HEADER: prediction_id}

    def record(self, items: list[FeedbackItem]) -> tuple[int, int]:
        """Count the outcomes; returns (attributed, unattributed). Each id takes one outcome."""
        attributed = 0
        for item in items:
            with self._lock:
                digest = self._ids.pop(item.predictionId, None)
            if digest is None:
                self._unattributed.inc()
                continue
            kind = "binary" if isinstance(item.outcome, bool) else "numeric"
            value = float(item.outcome)
            FEEDBACK.labels(self.model, digest, kind).inc()
            OUTCOME.labels(self.model, digest).observe(value)
            OUTCOME_SQUARES.labels(self.model, digest).observe(value * value)
            attributed += 1
        return attributed, len(items) - attributed


def check_capacity(capacity: int) -> None:
    if not 1 <= capacity <= MAX_FEEDBACK_IDS:
        raise ValueError(f"--feedback_ids must be within [1, {MAX_FEEDBACK_IDS}], got {capacity}")


async def read_bounded(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes (a declared
    Content-Length too, before reading): Starlette's ``request.body()`` reads it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise FeedbackError(f"feedback body is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FeedbackError(f"feedback body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def feedback_router(books: Mapping[str, PredictionBook]) -> APIRouter:
    """``POST /v1/models/<name>/feedback`` for the models of ``books`` (name -> book).

    Body: ``{"predictionId": "...", "outcome": true|false|<number>}`` or a list of up to
    :data:`MAX_ITEMS` of them; all or nothing (a bad item refuses the whole request). Answer:
    ``{"attributed": n, "unattributed": m}``; a bad body is a one-line HTTP 400."""
    router = APIRouter()

    @router.post("/v1/models/{model_name}/feedback")
    async def feedback(model_name: str, request: Request) -> JSONResponse:
        book = books.get(model_name)
        if book is None:  # KServe's wording and status for an unknown model
            return JSONResponse({"error": f"Model with name {model_name} does not exist."}, status_code=404)
        try:
            items = parse_feedback(await read_bounded(request))
        except FeedbackError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        attributed, unattributed = book.record(items)
        return JSONResponse({"attributed": attributed, "unattributed": unattributed})

    return router
