"""Prometheus metrics of the operator (prometheus-client, default registry).

Per-model gauges carry only namespace/name labels and are removed when the model is
deleted, so cardinality is bounded by the number of CompressedModels.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from modelpress import api

RECONCILES = Counter("modelpress_reconciles_total", "Reconciles by handler.", ["handler"])
ERRORS = Counter("modelpress_reconcile_errors_total", "Reconcile errors by handler.", ["handler"])
JOBS_CREATED = Counter("modelpress_jobs_created_total", "Compression Jobs created.")
JOB_DURATION = Histogram(
    "modelpress_job_duration_seconds",
    "Compression Job run time by outcome.",
    ["outcome"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
)
MODELS = Gauge("modelpress_models", "CompressedModels by phase.", ["phase"])
SIZE_RATIO = Gauge("modelpress_model_size_ratio", "Compressed / baseline bytes.", ["namespace", "name"])
ACCURACY_DROP = Gauge("modelpress_model_accuracy_drop", "Baseline minus compressed score.", ["namespace", "name"])
SPEEDUP = Gauge("modelpress_model_speedup", "Baseline / compressed p50 latency.", ["namespace", "name"])
PER_MODEL = ((SIZE_RATIO, "sizeRatio"), (ACCURACY_DROP, "accuracyDrop"), (SPEEDUP, "speedup"))

_phases: dict[tuple[str, str], str] = {}


def serve(port: int) -> Any:
    """Start the /metrics endpoint; returns the server so tests can stop it."""
    server, _thread = start_http_server(port)
    return server


def observe_model(namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
    """Track one model's phase and result gauges from its current status."""
    status = status or {}
    _phases[(namespace, name)] = status.get("phase") or api.Phase.Pending.value
    _publish_phases()
    results = status.get("results") or {}
    for gauge, key in PER_MODEL:
        value = results.get(key)
        if isinstance(value, (int, float)):
            gauge.labels(namespace, name).set(value)


def forget_model(namespace: str, name: str) -> None:
    _phases.pop((namespace, name), None)
    _publish_phases()
    for gauge, _ in PER_MODEL:
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass


def reset() -> None:
    """Forget every model (operator start): the initial watch listing rebuilds the gauges."""
    for namespace, name in list(_phases):
        forget_model(namespace, name)


def _publish_phases() -> None:
    tally = Tally(_phases.values())
    for phase in api.Phase:
        MODELS.labels(phase.value).set(tally.get(phase.value, 0))
