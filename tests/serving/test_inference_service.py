"""The InferenceService builder against KServe's published CRD schema (strict: unknown
fields are errors, as the API server's structural pruning would silently drop them)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelpress import api
from modelpress.operator.inference_service import ServingConfigError, build_inference_service, serving_uri
from modelpress.operator.rollout import Traffic
from modelpress.operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]
KSERVE_SCHEMAS = REPO.parent / "shared" / "schemas" / "kserve"
STABLE, CANARY = "s3://models/out/aaaa/", "s3://models/out/bbbb/"


def strict(schema: Any) -> Any:
    """Objects with declared properties and no additionalProperties reject unknown keys."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def isvc_validator() -> jsonschema.Draft7Validator:
    # The CRD is megabytes of YAML: the C loader keeps this test fast.
    text = (KSERVE_SCHEMAS / "full_serving.kserve.io_inferenceservices.yaml").read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is not in the CRD
    return jsonschema.Draft7Validator(schema)


def make_model(serving: dict[str, Any], uid: str | None = "1234-uid") -> api.CompressedModel:
    meta: dict[str, Any] = {"name": "digits", "namespace": "ml"}
    if uid:
        meta["uid"] = uid
    return api.CompressedModel.model_validate(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": meta,
            "spec": {
                "source": {"storageUri": "s3://models/digits.onnx", "format": "onnx", "task": "classification"},
                "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
                "validation": {
                    "dataset": {"storageUri": "s3://data/val.npz", "format": "npz"},
                    "metric": "accuracy",
                    "maxAccuracyDrop": {"absolute": 0.01},
                },
                "output": {"storageUri": "s3://models/out/"},
                "serving": serving,
            },
        }
    )


SERVINGS = {
    "knative-cpu": {"deploymentMode": "Knative"},
    "standard-gpu-triton": {
        "deploymentMode": "Standard",
        "runtime": "kserve-tritonserver",
        "gpu": 1,
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "metric": "cpu", "target": 70},
        "inferenceService": "digits-prod",
    },
    "standard-rps": {"deploymentMode": "Standard", "autoscaling": {"metric": "rps", "target": 100}},
    "standard-hpa-metrics": {
        "deploymentMode": "Standard",
        "autoscaling": {
            "metrics": [
                {"resource": {"name": "cpu", "averageUtilization": 60}},
                {"resource": {"name": "memory", "averageValue": "1.5Gi"}},
            ]
        },
    },
    "standard-keda": {
        "deploymentMode": "Standard",
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 10,
            "metrics": [
                {"prometheus": {"query": "sum(rate(modelpress_inference_requests_total[1m]))", "target": 50}},
                {"prometheus": {"query": "max(queue)", "target": 2.5, "targetType": "Value",
                                "serverAddress": "http://keda-prom:9090"}},
                {"resource": {"name": "cpu", "averageUtilization": 80}},
            ],
        },
        "rollout": {"analysis": {"prometheusUrl": "http://prom.monitoring:9090"}},
    },
}  # fmt: skip
TRAFFIC = {"stable": Traffic(STABLE), "canary": Traffic(STABLE, CANARY, 25)}


@pytest.mark.parametrize("serving", SERVINGS, ids=list(SERVINGS))
@pytest.mark.parametrize("traffic", TRAFFIC, ids=list(TRAFFIC))
def test_every_built_inference_service_validates(isvc_validator, serving, traffic):
    isvc = build_inference_service(make_model(SERVINGS[serving]), TRAFFIC[traffic], Settings())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in isvc_validator.iter_errors(isvc)]
    assert not errors


def test_the_strict_schema_catches_a_typo(isvc_validator):
    isvc = build_inference_service(make_model({}), Traffic(STABLE), Settings())
    isvc["spec"]["predictor"]["scaleMetrc"] = "rps"
    assert any("scaleMetrc" in e.message for e in isvc_validator.iter_errors(isvc))


def test_knative_canary_uses_canary_traffic_percent():
    isvc = build_inference_service(make_model({"deploymentMode": "Knative"}), Traffic(STABLE, CANARY, 10), Settings())
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == CANARY and predictor["canaryTrafficPercent"] == 10
    assert "canary" not in isvc["spec"]
    promoted = build_inference_service(make_model({"deploymentMode": "Knative"}), Traffic(CANARY), Settings())
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]


def test_standard_canary_uses_canary_entries_and_keeps_stable_predictor():
    model = make_model(SERVINGS["standard-gpu-triton"])
    isvc = build_inference_service(model, Traffic(STABLE, CANARY, 30), Settings(extra_labels={"team": "ml"}))
    assert isvc["metadata"]["name"] == "digits-prod" and isvc["metadata"]["namespace"] == "ml"
    assert isvc["metadata"]["labels"]["team"] == "ml"
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"] == {
        "name": "kserve-container",
        "modelFormat": {"name": "onnx"},
        "runtime": "kserve-tritonserver",
        "storageUri": STABLE,
        "protocolVersion": "v2",
        "resources": {
            "requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1},
            "limits": {"memory": "8Gi", "nvidia.com/gpu": 1},
        },
    }
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"]) == (2, 6, "cpu")
    assert (predictor["scaleTarget"], predictor["scaleMetricType"]) == (70, "Utilization")
    [entry] = isvc["spec"]["canary"]
    assert entry["trafficPercent"] == 30 and entry["predictor"]["model"]["storageUri"] == CANARY
    assert serving_uri(isvc) == STABLE


def test_owner_reference_only_when_modelpress_created_it():
    owned = build_inference_service(make_model({}), Traffic(STABLE), Settings())
    [ref] = owned["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("CompressedModel", "digits", "1234-uid", True)
    adopted = build_inference_service(make_model({}), Traffic(STABLE), Settings(), owned=False)
    assert "ownerReferences" not in adopted["metadata"]
    rendered = build_inference_service(make_model({}, uid=None), Traffic(STABLE), Settings())
    assert "ownerReferences" not in rendered["metadata"]


def test_builder_is_pure():
    model = make_model(SERVINGS["standard-rps"])
    assert build_inference_service(model, Traffic(STABLE, CANARY, 5), Settings()) == build_inference_service(
        model, Traffic(STABLE, CANARY, 5), Settings()
    )
    assert serving_uri(None) is None


def test_render_prints_the_inference_service_for_the_expected_artifact(isvc_validator):
    from modelpress.operator.render import render_objects

    model = make_model({"deploymentMode": "Knative"})
    [isvc] = [o for o in render_objects(model, Settings()) if o["kind"] == "InferenceService"]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"s3://models/out/{api.recipe_hash(model.spec)}"
    assert not list(isvc_validator.iter_errors(isvc))
    no_serving = make_model({"enabled": False})
    assert not [o for o in render_objects(no_serving, Settings()) if o["kind"] == "InferenceService"]


# ---------------------------------------------------------------- autoScaling.metrics (HPA / KEDA)


def test_resource_metrics_map_to_kserve_autoscaling_and_replace_scale_metric():
    isvc = build_inference_service(
        make_model(SERVINGS["standard-hpa-metrics"]), Traffic(STABLE, CANARY, 20), Settings()
    )
    for predictor in (isvc["spec"]["predictor"], isvc["spec"]["canary"][0]["predictor"]):
        assert predictor["autoScaling"] == {
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1.5Gi"}}},
            ]
        }  # fmt: skip
        assert not {"scaleMetric", "scaleTarget", "scaleMetricType"} & predictor.keys()
        assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    # Resource metrics alone are KServe's default HPA: no KEDA annotation.
    assert "serving.kserve.io/autoscalerClass" not in isvc["metadata"]["annotations"]


def test_prometheus_metrics_are_keda_external_metrics():
    isvc = build_inference_service(make_model(SERVINGS["standard-keda"]), Traffic(STABLE), Settings())
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    rps, queue, cpu = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
    assert rps == {
        "type": "External",
        "external": {
            "metric": {
                "backend": "prometheus",
                # serverAddress unset: the rollout analysis' Prometheus.
                "serverAddress": "http://prom.monitoring:9090",
                "query": "sum(rate(modelpress_inference_requests_total[1m]))",
            },
            "target": {"type": "AverageValue", "averageValue": "50"},
        },
    }
    assert queue["external"]["metric"]["serverAddress"] == "http://keda-prom:9090"
    assert queue["external"]["target"] == {"type": "Value", "value": "2.5"}
    assert cpu["type"] == "Resource"
    assert "scaleMetric" not in isvc["spec"]["predictor"]


def test_prometheus_server_address_falls_back_to_the_operator_setting_then_fails_clearly():
    prometheus = {"prometheus": {"query": "up", "target": 1}}
    serving = {"deploymentMode": "Standard", "autoscaling": {"metrics": [prometheus]}}
    isvc = build_inference_service(make_model(serving), Traffic(STABLE), Settings(prometheus_url="http://op-prom:9090"))
    [metric] = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
    assert metric["external"]["metric"]["serverAddress"] == "http://op-prom:9090"
    with pytest.raises(ServingConfigError, match=r"prometheus\.serverAddress.*--prometheus-url"):
        build_inference_service(make_model(serving), Traffic(STABLE), Settings())
    # The error names the entry that has no Prometheus, not just the list.
    cpu = {"resource": {"name": "cpu", "averageUtilization": 80}}
    serving["autoscaling"]["metrics"] = [cpu, prometheus]
    with pytest.raises(
        ServingConfigError, match=r"^spec\.serving\.autoscaling\.metrics\[1\]\.prometheus\.serverAddress:"
    ):
        build_inference_service(make_model(serving), Traffic(STABLE), Settings())


def test_the_keda_example_builds_a_valid_keda_inference_service(isvc_validator):
    model = api.CompressedModel.model_validate(yaml.safe_load((REPO / "examples" / "serving-keda.yaml").read_text()))
    isvc = build_inference_service(model, Traffic(STABLE, CANARY, 20), Settings())
    assert not [e.message for e in isvc_validator.iter_errors(isvc)]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    [canary] = isvc["spec"]["canary"]
    assert canary["predictor"]["autoScaling"] == isvc["spec"]["predictor"]["autoScaling"]


# ---------------------------------------------------------------- shadowing

SHADOW = {"sampleFraction": 0.25, "maxQueuedRequests": 32}
SHADOW_ARGS = [
    "--shadow_model_dir=/mnt/candidate",
    "--shadow_fraction=0.25",
    "--shadow_task=classification",
    "--shadow_queue=32",
]
SHADOWING_URIS = [{"uri": STABLE, "mountPath": "/mnt/models"}, {"uri": CANARY, "mountPath": "/mnt/candidate"}]


def shadow_model(mode: str, **shadow: Any) -> api.CompressedModel:
    return make_model({"deploymentMode": mode, "rollout": {"shadow": {**SHADOW, **shadow}}})


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_in_shadow_the_stable_predictor_loads_and_shadows_the_candidate(isvc_validator, mode):
    isvc = build_inference_service(shadow_model(mode), Traffic(STABLE, shadow_uri=CANARY), Settings())
    assert not [f"{list(e.absolute_path)}: {e.message}" for e in isvc_validator.iter_errors(isvc)]
    predictor = isvc["spec"]["predictor"]
    assert predictor["storageUris"] == SHADOWING_URIS
    assert "storageUri" not in predictor["model"]  # KServe: storageUri and storageUris exclude each other
    assert predictor["model"]["args"] == SHADOW_ARGS
    assert "canary" not in isvc["spec"] and "canaryTrafficPercent" not in predictor  # no user gets the candidate
    assert serving_uri(isvc) == STABLE


def test_standard_canary_keeps_shadowing_on_the_stable_predictor_with_during_canary(isvc_validator):
    isvc = build_inference_service(shadow_model("Standard"), Traffic(STABLE, CANARY, 10), Settings())
    assert not list(isvc_validator.iter_errors(isvc))
    assert isvc["spec"]["predictor"]["storageUris"] == SHADOWING_URIS
    assert isvc["spec"]["predictor"]["model"]["args"] == SHADOW_ARGS
    [canary] = isvc["spec"]["canary"]
    assert canary["trafficPercent"] == 10 and canary["predictor"]["model"]["storageUri"] == CANARY
    assert "args" not in canary["predictor"]["model"] and "storageUris" not in canary["predictor"]
    assert serving_uri(isvc) == STABLE


def test_standard_canary_without_during_canary_and_knative_canary_are_plain(isvc_validator):
    off = build_inference_service(shadow_model("Standard", duringCanary=False), Traffic(STABLE, CANARY, 10), Settings())
    assert "storageUris" not in off["spec"]["predictor"] and "args" not in off["spec"]["predictor"]["model"]
    assert off["spec"]["predictor"]["model"]["storageUri"] == STABLE
    # Knative: the predictor is the canary's new revision; the previous (shadowing) revision keeps shadowing.
    knative = build_inference_service(shadow_model("Knative"), Traffic(STABLE, CANARY, 10), Settings())
    predictor = knative["spec"]["predictor"]
    assert (predictor["model"]["storageUri"], predictor["canaryTrafficPercent"]) == (CANARY, 10)
    assert "storageUris" not in predictor and "args" not in predictor["model"]
    for isvc in (off, knative):
        assert not list(isvc_validator.iter_errors(isvc))


def test_without_a_shadow_spec_a_shadow_candidate_is_not_loaded():
    isvc = build_inference_service(make_model({}), Traffic(STABLE, shadow_uri=CANARY), Settings())
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == STABLE and "storageUris" not in isvc["spec"]["predictor"]


def test_serving_uri_reads_the_stable_mount_of_storage_uris():
    uris = [{"uri": CANARY, "mountPath": "/mnt/candidate"}, {"uri": STABLE}]  # KServe's default mountPath
    assert serving_uri({"spec": {"predictor": {"storageUris": uris, "model": {}}}}) == STABLE
    assert serving_uri({"spec": {"predictor": {"storageUris": uris[:1], "model": {}}}}) is None
