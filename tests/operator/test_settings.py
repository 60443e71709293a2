"""Operator settings that take shaped strings: extra labels and the pod-check interval."""

from __future__ import annotations

import argparse

import pytest
from cluster import sample_model

from modelpress import api
from modelpress.operator import render
from modelpress.operator import settings as settings_mod

LABELS = "team=search, example.com/cost-centre=ml-42,empty="
PARSED = {"team": "search", "example.com/cost-centre": "ml-42", "empty": ""}


def parse_flags(*argv: str) -> settings_mod.Settings:
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    return settings_mod.from_args(parser.parse_args(list(argv)))


def test_extra_labels_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_mod.from_env({}).extra_labels == {}
    assert settings_mod.from_env({"MODELPRESS_EXTRA_LABELS": LABELS}).extra_labels == PARSED
    monkeypatch.setenv("MODELPRESS_EXTRA_LABELS", "team=ops")
    assert parse_flags().extra_labels == {"team": "ops"}
    # Flags win over the environment, repeated flags add up.
    flagged = parse_flags("--extra-label", "team=search", "--extra-label", "example.com/cost-centre=ml-42")
    assert flagged.extra_labels == {"team": "search", "example.com/cost-centre": "ml-42"}


@pytest.mark.parametrize(
    "bad",
    [
        "team",  # no "="
        "team=search ml",  # space in the value
        "-team=search",  # key must start alphanumeric
        "Example.com/team=search",  # prefix is a lowercase DNS subdomain
        "a/b/c=x",
        "k" * 64 + "=x",  # name part over 63
        "team=" + "v" * 64,  # value over 63
        "p" * 254 + "/team=x",  # prefix over 253
    ],
)
def test_bad_extra_labels_are_refused_naming_where(bad: str) -> None:
    with pytest.raises(ValueError) as env_err:
        settings_mod.from_env({"MODELPRESS_EXTRA_LABELS": bad})
    assert str(env_err.value) == (
        f"MODELPRESS_EXTRA_LABELS must be comma-separated key=value Kubernetes labels, got {bad!r}"
    )
    with pytest.raises(ValueError, match="^--extra-label must be comma-separated key=value Kubernetes labels"):
        parse_flags(f"--extra-label={bad}")


@pytest.mark.parametrize("key", ["job-name", "controller-uid", "batch.kubernetes.io/job-name"])
def test_labels_the_job_controller_sets_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match=f"^MODELPRESS_EXTRA_LABELS: {key} is set by the Job controller"):
        settings_mod.from_env({"MODELPRESS_EXTRA_LABELS": f"team=search,{key}=x"})
    with pytest.raises(ValueError, match=f"^--extra-label: {key} is set by the Job controller"):
        parse_flags(f"--extra-label={key}=x")


def test_longest_valid_label_is_accepted() -> None:
    key, value = "p" * 253 + "/" + "k" * 63, "v" * 63
    assert settings_mod.from_env({"MODELPRESS_EXTRA_LABELS": f"{key}={value}"}).extra_labels == {key: value}


def test_every_created_object_carries_the_extra_labels_and_keeps_its_own() -> None:
    settings = settings_mod.from_env({"MODELPRESS_EXTRA_LABELS": "team=search,app.kubernetes.io/name=mine"})
    doc = sample_model(serving={"enabled": True})
    objects = render.render_objects(api.CompressedModel.model_validate(doc), settings)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job", "InferenceService"]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["team"] == "search", obj["kind"]
        # The operator's own labels win: selectors and kubectl views rely on them.
        assert labels["app.kubernetes.io/name"] == "modelpress", obj["kind"]
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "search"


def test_pod_check_interval_is_a_setting() -> None:
    assert settings_mod.Settings().pod_check_seconds == 30
    assert settings_mod.from_env({"MODELPRESS_POD_CHECK_SECONDS": "0.5"}).pod_check_seconds == 0.5
    with pytest.raises(ValueError, match="^MODELPRESS_POD_CHECK_SECONDS must be a number, got 'often'$"):
        settings_mod.from_env({"MODELPRESS_POD_CHECK_SECONDS": "often"})
    for busy in ("0", "-5", "nan"):  # each would list pods in a tight loop
        with pytest.raises(ValueError, match="^MODELPRESS_POD_CHECK_SECONDS must be a number of seconds above 0"):
            settings_mod.from_env({"MODELPRESS_POD_CHECK_SECONDS": busy})
