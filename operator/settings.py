"""Operator-wide settings, read once from flags or environment.

Every field has an environment twin (``MODELPRESS_<FIELD>``) so the Helm chart can set
them without templating command lines; flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

DEFAULT_JOB_IMAGE = "ghcr.io/modelpress/modelpress-jobs:0.1.0"


@dataclass(frozen=True)
class Settings:
    """What an operator replica needs beyond the CompressedModel itself."""

    namespaces: tuple[str, ...] = ()  # empty = all namespaces (cluster-wide)
    job_image: str = DEFAULT_JOB_IMAGE
    default_gpu: int = 1
    max_concurrent_jobs: int = 0  # 0 = no cap (use Kueue for real GPU queueing)
    job_ttl_seconds: int = 86400
    job_backoff_limit: int = 2
    job_active_deadline_seconds: int = 6 * 3600
    job_run_as_user: int = 1000
    prometheus_url: str = ""
    metrics_port: int = 8000
    liveness_port: int = 8080
    standalone: bool = True
    peering_name: str = "modelpress"
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces


def _env_name(name: str) -> str:
    return "MODELPRESS_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``modelpress operator`` (defaults come from the environment)."""
    env = os.environ
    ns = parser.add_mutually_exclusive_group()
    ns.add_argument(
        "-n", "--namespace", dest="namespaces", action="append", default=None,
        help="Watch this namespace (repeatable). Env: MODELPRESS_NAMESPACES (comma-separated).",
    )
    ns.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace (default).")
    parser.add_argument("--job-image", default=env.get(_env_name("job_image"), Settings.job_image))
    parser.add_argument("--default-gpu", type=int, default=int(env.get(_env_name("default_gpu"), Settings.default_gpu)))
    parser.add_argument(
        "--max-concurrent-jobs", type=int,
        default=int(env.get(_env_name("max_concurrent_jobs"), Settings.max_concurrent_jobs)),
        help="Cap on running compression Jobs; 0 = no cap. Waiting models show phase Queued.",
    )
    parser.add_argument("--job-ttl-seconds", type=int, default=int(env.get(_env_name("job_ttl_seconds"), Settings.job_ttl_seconds)))
    parser.add_argument("--prometheus-url", default=env.get(_env_name("prometheus_url"), Settings.prometheus_url))
    parser.add_argument("--metrics-port", type=int, default=int(env.get(_env_name("metrics_port"), Settings.metrics_port)))
    parser.add_argument("--liveness-port", type=int, default=int(env.get(_env_name("liveness_port"), Settings.liveness_port)))
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--standalone", dest="standalone", action="store_true", default=None,
                         help="Run without peering (one replica). Default.")
    peering.add_argument("--peering", dest="peering_name", default=None,
                         help="Use kopf peering under this name (several replicas, one active).")


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags; anything absent falls back to the environment."""
    base = from_env()
    namespaces = tuple(args.namespaces) if getattr(args, "namespaces", None) else base.namespaces
    if getattr(args, "all_namespaces", False):
        namespaces = ()
    peering_name = getattr(args, "peering_name", None)
    return Settings(
        namespaces=namespaces,
        job_image=args.job_image,
        default_gpu=args.default_gpu,
        max_concurrent_jobs=args.max_concurrent_jobs,
        job_ttl_seconds=args.job_ttl_seconds,
        job_backoff_limit=base.job_backoff_limit,
        job_active_deadline_seconds=base.job_active_deadline_seconds,
        job_run_as_user=base.job_run_as_user,
        prometheus_url=args.prometheus_url,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        standalone=peering_name is None and base.standalone,
        peering_name=peering_name or base.peering_name,
    )


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``MODELPRESS_*`` variables (used by ``kopf run -m`` and tests)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = env.get(_env_name(f.name))
        if raw is None or f.name == "extra_labels":
            continue
        if f.name == "namespaces":
            values[f.name] = tuple(n.strip() for n in raw.split(",") if n.strip())
        elif f.name == "standalone":
            values[f.name] = raw.lower() in ("1", "true", "yes")
        elif f.type in ("int", int):
            try:
                values[f.name] = int(raw)
            except ValueError as exc:
                raise ValueError(f"{_env_name(f.name)} must be an integer, got {raw!r}") from exc
        else:
            values[f.name] = raw
    return Settings(**values)  # type: ignore[arg-type]
