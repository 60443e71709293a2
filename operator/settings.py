"""Operator-wide settings, read once from flags or environment.

Every field has an environment twin (``MODELPRESS_<FIELD>``) so the Helm chart can set
them without templating command lines; flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

DEFAULT_JOB_IMAGE = "ghcr.io/modelpress/modelpress-jobs:0.1.0"
PROMETHEUS_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Kubernetes label syntax (apimachinery's IsQualifiedName / IsValidLabelValue): an optional
# DNS-subdomain prefix (<= 253) and "/", a name <= 63; values <= 63, possibly empty.
_LABEL_KEY = re.compile(r"(?:([a-z0-9](?:[-a-z0-9.]*[a-z0-9])?)/)?([A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")
# Pod labels the Job controller sets (and keeps, when a template already has them): an
# extra label under one of these keys would hide the compression pods from the operator.
JOB_CONTROLLER_LABELS = frozenset({"job-name", "controller-uid"})
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


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
    # The Prometheus label that carries a scraped pod's namespace (kubernetes_sd
    # relabelling usually names it "namespace"); "" scopes canary queries by model only.
    analysis_namespace_label: str = "namespace"
    metrics_port: int = 8000
    liveness_port: int = 8080
    standalone: bool = True
    peering_name: str = "modelpress"
    extra_labels: Mapping[str, str] = field(default_factory=dict)  # on every object the operator creates
    # How often pods of running compression Jobs are checked for stuck states (image pulls...).
    pod_check_seconds: float = 30.0

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces


def _env_name(name: str) -> str:
    return "MODELPRESS_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``modelpress operator``; unset flags fall back to ``MODELPRESS_*`` then defaults.

    Defaults are resolved in :func:`from_args`, not here, so a bad environment value gives a
    clear error when the operator starts instead of breaking ``--help``.
    """
    ns = parser.add_mutually_exclusive_group()
    ns.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        help="Watch this namespace (repeatable). Env: MODELPRESS_NAMESPACES (comma-separated).",
    )
    ns.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace (the default).")
    parser.add_argument(
        "--job-image", help=f"Compression image when spec.job.image is unset (default {DEFAULT_JOB_IMAGE})."
    )
    parser.add_argument("--default-gpu", type=int, help="GPUs per Job when spec.job.gpu is unset (default 1).")
    parser.add_argument(
        "--max-concurrent-jobs",
        type=int,
        help="Cap on running compression Jobs; 0 = no cap (default). Waiting models show phase Queued.",
    )
    parser.add_argument("--job-ttl-seconds", type=int, help="ttlSecondsAfterFinished of the Jobs (default 86400).")
    parser.add_argument("--prometheus-url", help="Default Prometheus for rollout analysis.")
    parser.add_argument(
        "--analysis-namespace-label",
        help="Prometheus label holding the namespace, so canary queries see only their own namespace "
        '(default "namespace"; "" = do not scope by namespace).',
    )
    parser.add_argument(
        "--extra-label",
        dest="extra_labels",
        action="append",
        metavar="KEY=VALUE",
        help="Label added to created objects (repeatable). Env: MODELPRESS_EXTRA_LABELS.",
    )
    parser.add_argument("--metrics-port", type=int, help="Prometheus /metrics port; 0 = off (default 8000).")
    parser.add_argument("--liveness-port", type=int, help="/healthz port; 0 = off (default 8080).")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone",
        dest="standalone",
        action="store_true",
        default=None,
        help="Run without peering (one replica). The default.",
    )
    peering.add_argument(
        "--peering",
        dest="peering_name",
        default=None,
        help="Use kopf peering under this name (several replicas, one active).",
    )


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags over the environment; :class:`ValueError` names a bad variable."""
    base = from_env()
    overrides: dict[str, object] = {
        name: getattr(args, name)
        for name in (
            "job_image",
            "default_gpu",
            "max_concurrent_jobs",
            "job_ttl_seconds",
            "prometheus_url",
            "analysis_namespace_label",
            "metrics_port",
            "liveness_port",
        )
        if getattr(args, name, None) is not None
    }
    if getattr(args, "namespaces", None):
        overrides["namespaces"] = tuple(args.namespaces)
    if getattr(args, "extra_labels", None):
        overrides["extra_labels"] = _labels(",".join(args.extra_labels), "--extra-label")
    if getattr(args, "all_namespaces", False):
        overrides["namespaces"] = ()
    if getattr(args, "peering_name", None):
        overrides.update(standalone=False, peering_name=args.peering_name)
    elif getattr(args, "standalone", None):
        overrides["standalone"] = True
    return _checked(replace(base, **overrides))  # type: ignore[arg-type]


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``MODELPRESS_*`` variables (used by ``kopf run -m`` and tests)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = env.get(_env_name(f.name))
        if raw is None:
            continue
        if f.name == "namespaces":
            values[f.name] = tuple(n.strip() for n in raw.split(",") if n.strip())
        elif f.name == "standalone":
            values[f.name] = raw.lower() in ("1", "true", "yes")
        elif f.name == "extra_labels":
            values[f.name] = _labels(raw, _env_name(f.name))
        elif f.type in ("int", int):
            try:
                values[f.name] = int(raw)
            except ValueError as exc:
                raise ValueError(f"{_env_name(f.name)} must be an integer, got {raw!r}") from exc
        elif f.type in ("float", float):
            try:
                values[f.name] = float(raw)
            except ValueError as exc:
                raise ValueError(f"{_env_name(f.name)} must be a number, got {raw!r}") from exc
        else:
            values[f.name] = raw
    return _checked(Settings(**values))  # type: ignore[arg-type]


def _labels(raw: str, where: str) -> dict[str, str]:
    """``k=v,k2=v2`` as Kubernetes labels, checked here so a typo fails at startup rather
    than as a 422 on the first Job the operator creates."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        match = _LABEL_KEY.fullmatch(key)
        prefix = match.group(1) if match else None
        if not sep or not match or (prefix and len(prefix) > 253) or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(f"{where} must be comma-separated key=value Kubernetes labels, got {raw!r}")
        if key in JOB_CONTROLLER_LABELS or prefix == "batch.kubernetes.io":
            raise ValueError(
                f"{where}: {key} is set by the Job controller on the compression pods (the operator finds them "
                "by it); choose another key"
            )
        labels[key] = value
    return labels


def _checked(settings: Settings) -> Settings:
    """Values that are strings in the environment but must have a shape."""
    if not settings.pod_check_seconds > 0:  # 0 or less would list pods in a tight loop
        raise ValueError(
            f"MODELPRESS_POD_CHECK_SECONDS must be a number of seconds above 0, got {settings.pod_check_seconds!r}"
        )
    label = settings.analysis_namespace_label
    if label and not PROMETHEUS_LABEL.fullmatch(label):
        raise ValueError(
            "--analysis-namespace-label / MODELPRESS_ANALYSIS_NAMESPACE_LABEL must be a Prometheus label name "
            f'([a-zA-Z_][a-zA-Z0-9_]*) or "" for none, got {label!r}'
        )
    return settings
