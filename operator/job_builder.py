"""Pure builders: (CompressedModel, Settings) -> the ConfigMap and Job the operator applies.

No API calls and no clock here, so the same input always gives the same manifests;
``modelpress render`` prints exactly what the operator would create.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import yaml

from modelpress import api
from modelpress.operator.settings import Settings
from modelpress.summary import DEFAULT_TERMINATION_LOG, DETERMINISTIC_EXIT_CODES

# libyaml's dumper when present: the pure-Python one dominated the operator's CPU at scale.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

SPEC_DIR = "/etc/modelpress"
SPEC_KEY = "spec.yaml"
SCRATCH_DIR = "/tmp"
WORK_DIR = "/tmp/work"
TERMINATION_LOG = DEFAULT_TERMINATION_LOG
# The pod's three steps (KServe's storage-initializer pattern, one step further; SECURITY.md):
# download (init, with storage credentials) -> compress (init, no credentials: it parses the
# hostile model and data) -> upload (main, with storage credentials). Its termination
# message carries the job summary; a failing init container's carries why it failed.
DOWNLOAD_CONTAINER = "download"
COMPRESS_CONTAINER = "compress"
UPLOAD_CONTAINER = "upload"
# Sidecar-injecting identity webhooks (EKS pod identity / IRSA, Azure workload identity)
# mount their web-identity token into every container unless told to skip some.
SKIP_IDENTITY_ANNOTATIONS = ("eks.amazonaws.com/skip-containers", "azure.workload.identity/skip-containers")
# download/upload only move bytes; the compress container gets the spec's resources.
IO_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}}
GPU_RESOURCE = api.GPU_RESOURCE
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
LABEL_MODEL = f"{api.GROUP}/compressedmodel"
LABEL_HASH = f"{api.GROUP}/recipe-hash"
# pvc://<claim>/<path> URIs: the Job's pod mounts each claim at PVC_ROOT/<claim> and
# tells the job where through PVC_ROOT_ENV (read by modelpress.jobs.storage).
PVC_SCHEME = "pvc://"
PVC_ROOT = "/mnt/pvc"
PVC_ROOT_ENV = "MODELPRESS_PVC_ROOT"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

JOB_COMMAND = [
    "python",
    "-m",
    "modelpress.jobs",
    "--spec",
    f"{SPEC_DIR}/{SPEC_KEY}",
    "--termination-log",
    TERMINATION_LOG,
    "--workdir",
    WORK_DIR,
]


def job_name(name: str, recipe_hash: str) -> str:
    """Deterministic, so a restarted operator finds (409) instead of duplicating the Job."""
    return f"{name}-{recipe_hash[:8]}"


def labels(name: str, recipe_hash: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The operator's own labels win over ``extra`` (settings.extra_labels): selectors rely on them."""
    return {
        **extra,
        "app.kubernetes.io/name": "modelpress",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "compression-job",
        "app.kubernetes.io/managed-by": "modelpress-operator",
        LABEL_MODEL: name,
        LABEL_HASH: recipe_hash,
    }


def owner_reference(model: api.CompressedModel) -> list[dict[str, Any]]:
    """The CR owns what we create, so `kubectl delete cmodel` removes it by garbage collection.

    Rendering a file has no uid yet; then there is no owner reference to print.
    """
    uid = (model.metadata.model_extra or {}).get("uid")
    if not uid:
        return []
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": model.metadata.name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _metadata(model: api.CompressedModel, name: str, recipe_hash: str, settings: Settings) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": model.metadata.namespace or "default",
        "labels": labels(model.metadata.name, recipe_hash, settings.extra_labels),
    }
    owners = owner_reference(model)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def spec_document(model: api.CompressedModel) -> str:
    """What the Job reads at /etc/modelpress/spec.yaml: the resource without status."""
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": model.metadata.name, "namespace": model.metadata.namespace or "default"},
        "spec": model.spec.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=True)


def build_config_map(model: api.CompressedModel, settings: Settings) -> dict[str, Any]:
    """The spec travels in a ConfigMap (never env, never a Secret: it holds no secrets)."""
    rh = api.recipe_hash(model.spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(model, job_name(model.metadata.name, rh), rh, settings),
        "data": {SPEC_KEY: spec_document(model)},
    }


def _resources(job: api.JobSpec, gpu: int, default_memory_limit: str) -> dict[str, dict[str, Any]]:
    """The compress container's resources; memory is always limited (a model bomb must not take the node).

    Without a memory limit in the spec: the memory request when one is asked (a limit
    below it would be invalid), else the operator's default.
    """
    res = job.resources or api.Resources()
    requests = {k: str(v) for k, v in res.requests.items()}
    limits = {k: str(v) for k, v in res.limits.items()}
    limits.setdefault("memory", requests.get("memory", default_memory_limit))
    if gpu > 0:
        limits[GPU_RESOURCE] = str(gpu)
    else:
        limits.pop(GPU_RESOURCE, None)
        requests.pop(GPU_RESOURCE, None)
    out: dict[str, dict[str, Any]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _tolerations(job: api.JobSpec, gpu: int) -> list[dict[str, Any]]:
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in job.tolerations or []]
    # GPU node pools are usually tainted nvidia.com/gpu:NoSchedule; tolerate it by default.
    if gpu > 0 and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _security(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pod and container security contexts meeting the `restricted` Pod Security Standard."""
    seccomp = {"type": "RuntimeDefault"}
    pod = {
        "runAsNonRoot": True,
        "runAsUser": settings.job_run_as_user,
        "runAsGroup": settings.job_run_as_user,
        "fsGroup": settings.job_run_as_user,
        # A pvc:// output claim is writable: without this the kubelet re-chowns every file
        # on it (a model store can hold millions) each time a compression pod starts.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": seccomp,
    }
    container = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": seccomp,
    }
    return pod, container


def pvc_claims(spec: api.CompressedModelSpec) -> dict[str, bool]:
    """Every claim a pvc:// URI in the spec names -> whether the Job writes to it.

    The same storage URIs the job reads (source, validation data, calibration, a
    distillation student) and writes (output); only the output's claim is writable.
    """
    claims: dict[str, bool] = {}
    for uri in _read_uris(spec):
        if uri.startswith(PVC_SCHEME):
            claims.setdefault(_claim(uri), False)
    if spec.output.storage_uri.startswith(PVC_SCHEME):
        claims[_claim(spec.output.storage_uri)] = True
    return dict(sorted(claims.items()))


def _read_uris(spec: api.CompressedModelSpec) -> list[str]:
    """Every storage URI the job downloads."""
    reads = [spec.source.storage_uri, spec.validation.dataset.storage_uri]
    if spec.validation.calibration:
        reads.append(spec.validation.calibration.storage_uri)
    reads += [
        s.distill.student.storage_uri for s in spec.compression.steps if s.distill and s.distill.student.storage_uri
    ]
    return reads


def _claim(uri: str) -> str:
    return uri.removeprefix(PVC_SCHEME).split("/", 1)[0]


def _pvc_volume_name(claim: str) -> str:
    """A DNS-1123 label for the volume: the claim's own name when it fits, else a hash of it.

    Claim names are DNS subdomains (dots, up to 253 characters); volume names are labels.
    """
    name = f"pvc-{claim}"
    if len(name) <= 63 and _DNS_LABEL.match(name):
        return name
    return f"pvc-{hashlib.sha256(claim.encode()).hexdigest()[:16]}"


def _pvc_volumes(spec: api.CompressedModelSpec) -> list[dict[str, Any]]:
    """Volumes for the spec's claims (what KServe's storage initializer does for pvc://)."""
    return [
        {"name": _pvc_volume_name(claim), "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}}
        for claim, writable in pvc_claims(spec).items()
    ]


def _pvc_mounts(spec: api.CompressedModelSpec, phase: str) -> list[dict[str, Any]]:
    """The claims each container mounts: download and compress every claim read from,
    read-only (a downloaded pvc:// input is a link into its claim); upload only the output's.
    """
    if phase == UPLOAD_CONTAINER:
        uris, read_only = [spec.output.storage_uri], False
    else:
        uris, read_only = _read_uris(spec), True
    claims = sorted({_claim(uri) for uri in uris if uri.startswith(PVC_SCHEME)})
    return [
        {"name": _pvc_volume_name(claim), "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": read_only} for claim in claims
    ]


def build_job(model: api.CompressedModel, settings: Settings) -> dict[str, Any]:
    """The batch/v1 Job that compresses one recipe."""
    spec = model.spec
    job = spec.job
    rh = api.recipe_hash(spec)
    name = job_name(model.metadata.name, rh)
    gpu = settings.default_gpu if job.gpu is None else job.gpu
    meta = _metadata(model, name, rh, settings)
    if job.queue_name:
        meta["labels"][KUEUE_QUEUE_LABEL] = job.queue_name
    pod_security, container_security = _security(settings)
    image = job.image or settings.job_image

    def container(phase: str, resources: dict[str, Any], credentials: bool) -> dict[str, Any]:
        env = [{"name": "HOME", "value": SCRATCH_DIR}, {"name": "MODELPRESS_RECIPE_HASH", "value": rh}]
        if credentials:  # pvc:// URIs are resolved by the steps that download and upload
            env.append({"name": PVC_ROOT_ENV, "value": PVC_ROOT})
        return {
            "name": phase,
            "image": image,
            "command": [*JOB_COMMAND, "--phase", phase],
            "env": env,
            "volumeMounts": [
                {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
                {"name": "scratch", "mountPath": SCRATCH_DIR},
                *_pvc_mounts(spec, phase),
            ],
            # Copies: a dict shared between containers would print as a YAML alias in `modelpress render`.
            "resources": copy.deepcopy(resources),
            "securityContext": copy.deepcopy(container_security),
            "terminationMessagePath": TERMINATION_LOG,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The job never calls the Kubernetes API (it reports through termination messages).
        "automountServiceAccountToken": False,
        "securityContext": pod_security,
        "initContainers": [
            container(DOWNLOAD_CONTAINER, IO_RESOURCES, credentials=True),
            container(COMPRESS_CONTAINER, _resources(job, gpu, settings.job_memory_limit), credentials=False),
        ],
        "containers": [container(UPLOAD_CONTAINER, IO_RESOURCES, credentials=True)],
        "volumes": [
            {"name": "spec", "configMap": {"name": name, "items": [{"key": SPEC_KEY, "path": SPEC_KEY}]}},
            {"name": "scratch", "emptyDir": {"sizeLimit": settings.job_scratch_size_limit}},
            *_pvc_volumes(spec),
        ],
    }
    if job.service_account_name:
        pod_spec["serviceAccountName"] = job.service_account_name
    if job.node_selector:
        pod_spec["nodeSelector"] = dict(job.node_selector)
    tolerations = _tolerations(job, gpu)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if job.priority_class_name:
        pod_spec["priorityClassName"] = job.priority_class_name

    job_spec: dict[str, Any] = {
        "backoffLimit": settings.job_backoff_limit if job.backoff_limit is None else job.backoff_limit,
        "activeDeadlineSeconds": job.active_deadline_seconds or settings.job_active_deadline_seconds,
        "ttlSecondsAfterFinished": settings.job_ttl_seconds,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    # No containerName: the rule applies to every container, init containers
                    # included (a download or compress failure is as deterministic as upload's).
                    "onExitCodes": {
                        "operator": "In",
                        # Same input, same outcome: retrying them only burns GPU hours.
                        "values": [int(c) for c in DETERMINISTIC_EXIT_CODES],
                    },
                },
                # A preempted or evicted pod is not the recipe's fault: retry without counting.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": {
                "labels": dict(meta["labels"]),
                "annotations": dict.fromkeys(SKIP_IDENTITY_ANNOTATIONS, COMPRESS_CONTAINER),
            },
            "spec": pod_spec,
        },
    }
    if job.queue_name:
        job_spec["suspend"] = True  # Kueue admits (unsuspends) it when quota allows

    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def build_compression(model: api.CompressedModel, settings: Settings) -> list[dict[str, Any]]:
    """ConfigMap first: the Job's pod mounts it."""
    return [build_config_map(model, settings), build_job(model, settings)]
