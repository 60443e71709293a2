"""Which series the canary analysis looks at: the InferenceService's model name and, by
default, its namespace (operator setting ``analysis_namespace_label``)."""

from __future__ import annotations

import argparse

import pytest

from modelpress.operator import settings as settings_mod
from modelpress.operator.analysis import Target, requests_query, scope


def test_scope_matches_namespace_and_model_unless_the_label_is_off():
    assert scope("digits", "ml") == 'namespace="ml",model="digits"'
    assert scope("digits", "ml", "kubernetes_namespace") == 'kubernetes_namespace="ml",model="digits"'
    assert scope("digits", "ml", "") == 'model="digits"'
    query = requests_query(Target("abc", scope("digits", "ml"), "1m"))
    assert query == (
        'sum(increase(modelpress_inference_requests_total{namespace="ml",model="digits",artifact_digest="abc"}[1m]))'
    )


def test_the_label_setting_from_env_and_flag():
    assert settings_mod.Settings().analysis_namespace_label == "namespace"
    assert settings_mod.from_env({"MODELPRESS_ANALYSIS_NAMESPACE_LABEL": ""}).analysis_namespace_label == ""
    assert settings_mod.from_env({"MODELPRESS_ANALYSIS_NAMESPACE_LABEL": "k8s_ns"}).analysis_namespace_label == "k8s_ns"
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    flagged = settings_mod.from_args(parser.parse_args(["--analysis-namespace-label", "ns"]))
    assert flagged.analysis_namespace_label == "ns"


@pytest.mark.parametrize("bad", ['namespace"}', "kubernetes.namespace", "1ns"])
def test_a_label_prometheus_cannot_have_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="MODELPRESS_ANALYSIS_NAMESPACE_LABEL must be a Prometheus label name"):
        settings_mod.from_env({"MODELPRESS_ANALYSIS_NAMESPACE_LABEL": bad})
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    with pytest.raises(ValueError, match="--analysis-namespace-label"):
        settings_mod.from_args(parser.parse_args(["--analysis-namespace-label", bad]))
