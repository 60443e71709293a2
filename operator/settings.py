"""Operator-wide settings, read once from flags or environment.

Every field has an environment twin (``MODELPRESS_<FIELD>``) so the Helm chart can set
them without templating command lines; flags win over the environment. pydantic-settings
finds the variables and pydantic checks every value against the field's bounds, so a typo
such as ``MODELPRESS_STANDALONE=flase`` or a negative port stops the operator at start with
one line naming the variable and what it accepts (the field's description), instead of
silently meaning something else.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, create_model
from pydantic.dataclasses import dataclass, is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

ENV_PREFIX = "MODELPRESS_"
DEFAULT_JOB_IMAGE = "ghcr.io/modelpress/modelpress-jobs:0.1.0"
PROMETHEUS_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?")  # a byte quantity, as Kubernetes writes one
DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")  # namespace and peering names
# Kubernetes label syntax (apimachinery's IsQualifiedName / IsValidLabelValue): an optional
# DNS-subdomain prefix (<= 253) and "/", a name <= 63; values <= 63, possibly empty.
_LABEL_KEY = re.compile(r"(?:([a-z0-9](?:[-a-z0-9.]*[a-z0-9])?)/)?([A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")
# Pod labels the Job controller sets (and keeps, when a template already has them): an
# extra label under one of these keys would hide the compression pods from the operator.
JOB_CONTROLLER_LABELS = frozenset({"job-name", "controller-uid"})
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


class SettingsError(ValueError):
    """A setting the operator cannot start with; one line naming the variable or flag."""


class _Refused(ValueError):
    """A value refused for a reason of its own, said as it is (not only "must be ...")."""


def _comma_list(raw: object) -> object:
    """``a, b`` (the environment's form) as a tuple; any other value as it is."""
    if isinstance(raw, str):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    return raw


def _labels(raw: object) -> dict[str, str]:
    """``k=v,k2=v2`` (the environment's form) or a mapping as Kubernetes labels, checked
    here so a typo fails at startup rather than as a 422 on the first Job the operator creates."""
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, str):
        pairs = []
        for item in filter(None, (part.strip() for part in raw.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"{item!r} has no '='")
            pairs.append((key.strip(), value.strip()))
    else:
        raise ValueError("not labels")
    labels: dict[str, str] = {}
    for key, value in pairs:
        match = _LABEL_KEY.fullmatch(key) if isinstance(key, str) else None
        prefix = match.group(1) if match else None
        if (
            not match
            or (prefix and len(prefix) > 253)
            or not isinstance(value, str)
            or not _LABEL_VALUE.fullmatch(value)
        ):
            raise ValueError(f"{key}={value} is not a Kubernetes label")
        if key in JOB_CONTROLLER_LABELS or prefix == "batch.kubernetes.io":
            raise _Refused(
                f"{key} is set by the Job controller on the compression pods (the operator finds them by it); "
                "choose another key"
            )
        labels[key] = value
    return labels


def _matching(pattern: re.Pattern[str]) -> str:
    """``pattern`` for pydantic, which searches rather than matches whole strings."""
    return f"^(?:{pattern.pattern})$"


_PORT = "a port from 1 to 65535, or 0 for off"
_QUANTITY = "a Kubernetes quantity such as 50Gi"


@dataclass(frozen=True)
class Settings:
    """What an operator replica needs beyond the CompressedModel itself.

    A pydantic dataclass: every construction (environment, flags, ``dataclasses.replace``)
    checks the bounds; each field's description says what it accepts, for the error.
    """

    # empty = all namespaces (cluster-wide)
    namespaces: Annotated[
        tuple[Annotated[str, Field(pattern=_matching(DNS_LABEL))], ...],
        BeforeValidator(_comma_list),
        Field(description="comma-separated Kubernetes namespace names"),
    ] = ()
    job_image: Annotated[str, Field(min_length=1, description="a container image reference")] = DEFAULT_JOB_IMAGE
    default_gpu: Annotated[int, Field(ge=0, description="a whole number of GPUs, 0 or more")] = 1
    # 0 = no cap (use Kueue for real GPU queueing)
    max_concurrent_jobs: Annotated[int, Field(ge=0, description="a whole number, 0 (no cap) or more")] = 0
    job_ttl_seconds: Annotated[int, Field(ge=0, description="a whole number of seconds, 0 or more")] = 86400
    job_backoff_limit: Annotated[int, Field(ge=0, description="a whole number of retries, 0 or more")] = 2
    job_active_deadline_seconds: Annotated[int, Field(ge=1, description="a whole number of seconds above 0")] = 6 * 3600
    job_run_as_user: Annotated[int, Field(ge=1, le=2**31 - 1, description="a non-root user id, 1 to 2147483647")] = 1000
    prometheus_url: Annotated[
        str, Field(pattern=r"^(?:https?://.+)?$", description='an http:// or https:// URL, or "" for none')
    ] = ""
    # The Prometheus label that carries a scraped pod's namespace (kubernetes_sd
    # relabelling usually names it "namespace"); "" scopes canary queries by model only.
    analysis_namespace_label: Annotated[
        str,
        Field(
            pattern=f"^(?:{PROMETHEUS_LABEL.pattern})?$",
            description=f'a Prometheus label name ({PROMETHEUS_LABEL.pattern}) or "" for none',
        ),
    ] = "namespace"
    metrics_port: Annotated[int, Field(ge=0, le=65535, description=_PORT)] = 8000
    liveness_port: Annotated[int, Field(ge=0, le=65535, description=_PORT)] = 8080
    standalone: Annotated[bool, Field(description="true or false")] = True
    peering_name: Annotated[
        str,
        Field(
            pattern=_matching(DNS_LABEL),
            description="a Kubernetes name (lowercase letters, digits and '-', at most 63)",
        ),
    ] = "modelpress"
    # on every object the operator creates
    extra_labels: Annotated[
        dict[str, str],
        BeforeValidator(_labels),
        Field(description="comma-separated key=value Kubernetes labels"),
    ] = field(default_factory=dict)
    # How often pods of running compression Jobs are checked for stuck states (image pulls...);
    # 0 or less would list pods in a tight loop.
    pod_check_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False, description="a number of seconds above 0")] = (
        30.0
    )
    # The compression pod's scratch emptyDir (downloads, unpacked archives, the artifact):
    # past it the kubelet evicts the pod instead of letting a hostile archive fill the node.
    job_scratch_size_limit: Annotated[str, Field(pattern=_matching(QUANTITY), description=_QUANTITY)] = "50Gi"
    # Memory limit of the compress container when spec.job.resources sets neither a limit nor a request.
    job_memory_limit: Annotated[str, Field(pattern=_matching(QUANTITY), description=_QUANTITY)] = "32Gi"

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


# The flag that sets a field, where it is not --<field-name>.
_FLAGS = {"namespaces": "--namespace", "extra_labels": "--extra-label", "peering_name": "--peering"}


class _Environment(BaseSettings):
    """Where pydantic-settings finds each setting: ``MODELPRESS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)


# Every Settings field as a string: pydantic-settings reads BaseSettings models only, and the
# raw text is what Settings should check (not JSON-decoded, as pydantic-settings would do
# for the tuple and dict fields), so its errors can quote what was set.
_ENVIRONMENT = create_model(
    "SettingsEnvironment",
    __base__=_Environment,
    **{name: (str | None, None) for name in Settings.__dataclass_fields__},  # type: ignore[call-overload]
)


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping, so ``from_env(environ)``
    reads what tests and ``modelpress render`` pass as it reads ``os.environ``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_ENVIRONMENT)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The library's own override point (its dotenv source uses it); names match in any case.
        return {name.lower(): value for name, value in self._environ.items()}


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
    """Settings from parsed flags over the environment; :class:`SettingsError` names a bad variable or flag."""
    flags: dict[str, Any] = {
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
        flags["namespaces"] = tuple(args.namespaces)
    if getattr(args, "extra_labels", None):
        flags["extra_labels"] = ",".join(args.extra_labels)
    if getattr(args, "all_namespaces", False):
        flags["namespaces"] = ()
    if getattr(args, "peering_name", None):
        flags.update(standalone=False, peering_name=args.peering_name)
    elif getattr(args, "standalone", None):
        flags["standalone"] = True
    return load(flags=flags)


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``MODELPRESS_*`` variables (used by ``kopf run -m`` and tests)."""
    return load(environ)


def load(environ: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None) -> Settings:
    """Settings from ``flags`` (field name -> value) over the environment (``os.environ``
    unless given), over the defaults; :class:`SettingsError` names each bad variable or flag."""
    found = _EnvironmentSource(os.environ if environ is None else environ)()
    values = {name: value for name, value in found.items() if value is not None} | dict(flags or {})
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, values, set(flags or ()))) from None


def _fields() -> dict[str, FieldInfo]:
    """Settings' pydantic fields (``is_pydantic_dataclass`` tells the type checker it has them)."""
    assert is_pydantic_dataclass(Settings)
    return Settings.__pydantic_fields__


def _explain(exc: ValidationError, values: Mapping[str, Any], flagged: set[str]) -> str:
    """One line: each bad setting, by the variable or flag that set it, and what it accepts."""
    lines: dict[str, str] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if name in lines:
            continue
        where = _FLAGS.get(name, "--" + name.replace("_", "-")) if name in flagged else _env_name(name)
        reason = (error.get("ctx") or {}).get("error")
        if isinstance(reason, _Refused):
            lines[name] = f"{where}: {reason}"
        else:
            allowed = _fields()[name].description
            lines[name] = f"{where} must be {allowed}, got {values.get(name)!r}"
    return "; ".join(lines.values())
