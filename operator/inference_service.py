"""Pure builder: (CompressedModel, desired traffic, Settings) -> a KServe InferenceService.

The traffic split comes from :func:`modelpress.operator.rollout.desired_traffic`, so the
manifest is a function of ``status.rollout`` only (restart-safe, ``modelpress render``
prints the same thing). How a canary is expressed depends on the deployment mode:

* ``Knative``: the predictor points at the canary artifact and ``canaryTrafficPercent``
  sends that share to the newest revision; the rest stays on the previous revision (the
  stable model, which KServe remembers).
* ``Standard`` (KServe >= 0.20): the predictor is the stable model and ``spec.canary[]``
  holds one entry with the canary predictor and its ``trafficPercent``.

Promotion and rollback both end as a plain predictor on one artifact with no canary.

Shadowing (``serving.rollout.shadow``): the stable predictor loads the candidate too.
KServe's ``storageUri`` and ``storageUris`` are mutually exclusive, so a shadowing predictor
carries ``storageUris`` (the stable model at ``/mnt/models``, the candidate at
``/mnt/candidate``) and no ``model.storageUri``, and ``model.args`` hand the runtime its
``--shadow_*`` flags. In Standard mode the stable predictor shadows during stage Shadow
and, with ``duringCanary``, next to ``spec.canary[]``; in Knative mode it does so during
stage Shadow (at 100%), and once the canary starts the previous revision -- that same
shadowing predictor -- keeps shadowing while it serves the stable share.

``serving.autoscaling.metrics`` (Standard mode) becomes KServe's ``autoScaling.metrics``
block on every predictor, replacing ``scaleMetric``/``scaleTarget``; a prometheus entry
is a KEDA external metric, so the InferenceService then asks for KEDA as its autoscaler.
"""

from __future__ import annotations

from typing import Any

from modelpress import api
from modelpress.operator.job_builder import LABEL_MODEL, owner_reference
from modelpress.operator.rollout import Traffic
from modelpress.operator.settings import Settings

ISVC_API_VERSION = "serving.kserve.io/v1beta1"
ISVC_KIND = "InferenceService"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe creates a KEDA ScaledObject instead of an HPA when this says "keda".
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
GPU_RESOURCE = api.GPU_RESOURCE
CONTAINER_NAME = "kserve-container"
# KServe's Triton runtime speaks the Open Inference (v2) protocol only.
PROTOCOL = {api.Runtime.kserve_tritonserver.value: "v2"}
# HPA metrics in Standard mode are utilisation percentages; Knative's are raw values.
UTILIZATION_METRICS = ("cpu", "memory")
# Where KServe's storage initializer puts each of storageUris (the runtime's --model_dir is the first).
STABLE_MOUNT = "/mnt/models"
CANDIDATE_MOUNT = "/mnt/candidate"


def isvc_name(model: api.CompressedModel) -> str:
    serving = model.spec.serving
    return (serving.inference_service if serving else None) or model.metadata.name


def _model_block(serving: api.Serving, storage_uri: str) -> dict[str, Any]:
    resources: dict[str, dict[str, Any]] = {
        "requests": dict(serving.resources.requests),
        "limits": dict(serving.resources.limits),
    }
    if serving.gpu:
        resources["limits"][GPU_RESOURCE] = serving.gpu
        resources["requests"][GPU_RESOURCE] = serving.gpu
    block: dict[str, Any] = {
        # KServe's own container name; the schema of spec.canary[] requires it.
        "name": CONTAINER_NAME,
        "modelFormat": {"name": "onnx"},
        "runtime": serving.runtime,
        "storageUri": storage_uri,
    }
    if serving.runtime in PROTOCOL:
        block["protocolVersion"] = PROTOCOL[serving.runtime]
    resources = {k: v for k, v in resources.items() if v}
    if resources:
        block["resources"] = resources
    return block


class ServingConfigError(ValueError):
    """The spec asks for something the InferenceService cannot carry as configured."""


def _quantity(value: float) -> str:
    """A Kubernetes quantity string: ``2`` rather than ``2.0``, ``0.5`` as is."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _scaling_metric(index: int, metric: api.ScalingMetric, prometheus_url: str | None) -> dict[str, Any]:
    """One ``autoScaling.metrics[]`` entry (KServe's MetricsSpec); ``index`` names it in errors."""
    if metric.resource is not None:
        r = metric.resource
        if r.average_utilization is not None:
            target: dict[str, Any] = {"type": "Utilization", "averageUtilization": r.average_utilization}
        else:
            target = {"type": "AverageValue", "averageValue": r.average_value}
        return {"type": "Resource", "resource": {"name": r.name, "target": target}}
    p = metric.prometheus
    assert p is not None  # ScalingMetric validates exactly one of resource, prometheus
    address = p.server_address or prometheus_url
    if not address:
        raise ServingConfigError(
            f"spec.serving.autoscaling.metrics[{index}].prometheus.serverAddress: no Prometheus for KEDA to query; set it, "
            "or serving.rollout.analysis.prometheusUrl, or the operator's --prometheus-url"
        )
    value_key = "value" if p.target_type == api.ScalingTargetType.Value.value else "averageValue"
    return {
        "type": "External",
        "external": {
            "metric": {"backend": "prometheus", "serverAddress": address, "query": p.query},
            "target": {"type": p.target_type, value_key: _quantity(p.target)},
        },
    }


def shadow_args(shadow: api.Shadow, task: str) -> list[str]:
    """The modelpress-onnx flags that make the stable runtime shadow the candidate at CANDIDATE_MOUNT."""
    return [
        f"--shadow_model_dir={CANDIDATE_MOUNT}",
        f"--shadow_fraction={shadow.sample_fraction:g}",
        f"--shadow_task={task}",
        f"--shadow_queue={shadow.max_queued_requests}",
    ]


def shadowed_uri(serving: api.Serving, traffic: Traffic) -> str | None:
    """The candidate the stable predictor shadows for ``traffic``, or None (module docstring)."""
    shadow = serving.rollout.shadow
    if shadow is None:
        return None
    if traffic.shadow_uri:
        return traffic.shadow_uri
    standard = serving.deployment_mode == api.DeploymentMode.Standard.value
    return traffic.canary_uri if standard and shadow.during_canary else None


def _shadowing(predictor: dict[str, Any], stable_uri: str, candidate_uri: str, args: list[str]) -> None:
    """Make ``predictor`` load the candidate next to the stable model and shadow it."""
    predictor["storageUris"] = [
        {"uri": stable_uri, "mountPath": STABLE_MOUNT},
        {"uri": candidate_uri, "mountPath": CANDIDATE_MOUNT},
    ]
    model = predictor["model"]
    del model["storageUri"]  # KServe refuses storageUri together with storageUris
    model["args"] = args


def _predictor(serving: api.Serving, storage_uri: str, settings: Settings) -> dict[str, Any]:
    scaling = serving.autoscaling
    predictor: dict[str, Any] = {"minReplicas": scaling.min_replicas, "maxReplicas": scaling.max_replicas}
    if scaling.metrics:
        prometheus_url = serving.rollout.analysis.prometheus_url or settings.prometheus_url
        predictor["autoScaling"] = {
            "metrics": [_scaling_metric(i, m, prometheus_url) for i, m in enumerate(scaling.metrics)]
        }
    else:
        predictor.update(scaleMetric=scaling.metric, scaleTarget=scaling.target)
        if serving.deployment_mode == api.DeploymentMode.Standard.value and scaling.metric in UTILIZATION_METRICS:
            predictor["scaleMetricType"] = "Utilization"
    predictor["model"] = _model_block(serving, storage_uri)
    return predictor


def _annotations(serving: api.Serving) -> dict[str, str]:
    annotations: dict[str, str] = {DEPLOYMENT_MODE_ANNOTATION: serving.deployment_mode}
    if any(m.prometheus is not None for m in serving.autoscaling.metrics):
        annotations[AUTOSCALER_CLASS_ANNOTATION] = "keda"
    return annotations


def labels(model: api.CompressedModel, settings: Settings) -> dict[str, str]:
    return {
        **settings.extra_labels,
        "app.kubernetes.io/name": "modelpress",
        "app.kubernetes.io/instance": model.metadata.name,
        "app.kubernetes.io/component": "inference-service",
        "app.kubernetes.io/managed-by": "modelpress-operator",
        LABEL_MODEL: model.metadata.name,
    }


def build_inference_service(
    model: api.CompressedModel,
    traffic: Traffic,
    settings: Settings,
    owned: bool = True,
) -> dict[str, Any]:
    """The whole InferenceService for ``traffic``.

    ``owned``: ModelPress created it (the CR owns it and garbage collection removes it);
    False when it rolls out into an InferenceService someone else created. Raises
    :class:`ServingConfigError` when a prometheus scaling metric has no server to query.
    """
    serving = model.spec.serving or api.Serving()
    metadata: dict[str, Any] = {
        "name": isvc_name(model),
        "namespace": model.metadata.namespace or "default",
        "labels": labels(model, settings),
        "annotations": _annotations(serving),
    }
    if owned and (owners := owner_reference(model)):
        metadata["ownerReferences"] = owners
    canary_uri = traffic.canary_uri
    shadowed = shadowed_uri(serving, traffic)
    if serving.deployment_mode == api.DeploymentMode.Knative.value:
        predictor = _predictor(serving, traffic.stable_uri if canary_uri is None else canary_uri, settings)
        if canary_uri is not None:
            predictor["canaryTrafficPercent"] = traffic.canary_percent
        elif shadowed is not None and serving.rollout.shadow is not None:
            _shadowing(
                predictor, traffic.stable_uri, shadowed, shadow_args(serving.rollout.shadow, model.spec.source.task)
            )
        spec: dict[str, Any] = {"predictor": predictor}
    else:
        spec = {"predictor": _predictor(serving, traffic.stable_uri, settings)}
        if shadowed is not None and serving.rollout.shadow is not None:
            args = shadow_args(serving.rollout.shadow, model.spec.source.task)
            _shadowing(spec["predictor"], traffic.stable_uri, shadowed, args)
        if canary_uri is not None:
            spec["canary"] = [
                {
                    "predictor": _predictor(serving, canary_uri, settings),
                    "trafficPercent": traffic.canary_percent,
                }
            ]
    return {"apiVersion": ISVC_API_VERSION, "kind": ISVC_KIND, "metadata": metadata, "spec": spec}


def serving_uri(isvc: dict[str, Any] | None) -> str | None:
    """What an existing InferenceService serves as its stable model (None if absent).

    In Knative mode with a canary in flight the predictor already points at the canary;
    the stable model is then the one ModelPress recorded in ``status.rollout``. A shadowing
    predictor has no ``model.storageUri``: its stable model is the ``storageUris`` entry
    mounted where the runtime reads its model (STABLE_MOUNT, KServe's default mountPath).
    """
    if not isvc:
        return None
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    if uri := (predictor.get("model") or {}).get("storageUri"):
        return uri
    mounted = [
        s.get("uri") for s in predictor.get("storageUris") or [] if s.get("mountPath", STABLE_MOUNT) == STABLE_MOUNT
    ]
    return mounted[0] if mounted else None


def is_ready(isvc: dict[str, Any] | None) -> bool:
    """KServe reports the InferenceService Ready *for its current spec*.

    Ready=True alone can be left over from before our last patch, so when KServe
    reports ``status.observedGeneration`` it must have caught up with
    ``metadata.generation`` too.
    """
    if not isvc:
        return False
    status = isvc.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    observed, generation = status.get("observedGeneration"), (isvc.get("metadata") or {}).get("generation")
    return ready and (observed is None or generation is None or observed >= generation)


def expected_artifact_uri(model: api.CompressedModel) -> str:
    """Where the job writes the artifact: ``<output.storageUri>/<recipeHash>`` (jobs/pipeline.py)."""
    return model.spec.output.storage_uri.rstrip("/") + "/" + api.recipe_hash(model.spec)


def render_inference_service(model: api.CompressedModel, settings: Settings) -> dict[str, Any] | None:
    """For ``modelpress render``: the InferenceService once the validated artifact is
    promoted (the steps in between differ only in the traffic split); None without serving."""
    if model.spec.serving is None or not model.spec.serving.enabled:
        return None
    return build_inference_service(model, Traffic(expected_artifact_uri(model)), settings)
