"""Prometheus metrics of the operator (prometheus-client, default registry).

Per-model gauges carry only namespace/name labels and are removed when the model is
deleted, so cardinality is bounded by the number of CompressedModels.
"""

from __future__ import annotations

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

PHASES = tuple(p.value for p in api.Phase)
# Each model's last phase and the count per phase, kept in step so an event costs O(1),
# not a recount of every model.
_phases: dict[tuple[str, str], str] = {}
_counts: dict[str, int] = dict.fromkeys(PHASES, 0)
for _phase in PHASES:
    MODELS.labels(_phase).set(0)


def serve(port: int) -> Any:
    """Start the /metrics endpoint; returns the server so tests can stop it."""
    server, _thread = start_http_server(port)
    return server


def observe_model(namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
    """Track one model's phase and result gauges from its current status."""
    status = status or {}
    _move((namespace, name), status.get("phase") or api.Phase.Pending.value)
    results = status.get("results") or {}
    for gauge, key in PER_MODEL:
        value = results.get(key)
        if isinstance(value, (int, float)):
            gauge.labels(namespace, name).set(value)


def forget_model(namespace: str, name: str) -> None:
    _move((namespace, name), None)
    for gauge, _ in PER_MODEL:
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass


def reset() -> None:
    """Forget every model (operator start): the initial watch listing rebuilds the gauges."""
    for namespace, name in list(_phases):
        forget_model(namespace, name)


def _move(key: tuple[str, str], phase: str | None) -> None:
    """Count ``key`` under ``phase`` instead of its last one (None: forget it).

    A phase this version does not know is remembered (so :func:`reset` finds the model)
    but not published.
    """
    old = _phases.pop(key, None)
    if phase is not None:
        _phases[key] = phase
    if old == phase:
        return
    for moved, step in ((old, -1), (phase, 1)):
        if moved in _counts:
            _counts[moved] += step
            MODELS.labels(moved).set(_counts[moved])
