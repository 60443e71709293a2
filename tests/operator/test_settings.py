"""Operator settings from flags and MODELPRESS_* variables: each bad value is refused at start, in one line."""

from __future__ import annotations

import argparse
import dataclasses

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
    for busy in ("often", "0", "-5", "nan", "inf"):  # the numbers would list pods in a tight loop (or never)
        with pytest.raises(settings_mod.SettingsError) as err:
            settings_mod.from_env({"MODELPRESS_POD_CHECK_SECONDS": busy})
        assert str(err.value) == f"MODELPRESS_POD_CHECK_SECONDS must be a number of seconds above 0, got {busy!r}"


PORT = "a port from 1 to 65535, or 0 for off"
# (variable, value, what the error says it accepts): each once wrong, silently
# meaning something else (a typo'd boolean) or failing later (a port the kernel refuses).
BAD_SETTINGS = [
    ("MODELPRESS_STANDALONE", "flase", "true or false"),
    ("MODELPRESS_STANDALONE", "", "true or false"),
    ("MODELPRESS_METRICS_PORT", "-1", PORT),
    ("MODELPRESS_METRICS_PORT", "70000", PORT),
    ("MODELPRESS_LIVENESS_PORT", "-8080", PORT),
    ("MODELPRESS_LIVENESS_PORT", "65536", PORT),
    ("MODELPRESS_LIVENESS_PORT", "http", PORT),
    ("MODELPRESS_JOB_TTL_SECONDS", "-1", "a whole number of seconds, 0 or more"),
    ("MODELPRESS_JOB_ACTIVE_DEADLINE_SECONDS", "0", "a whole number of seconds above 0"),
    ("MODELPRESS_JOB_ACTIVE_DEADLINE_SECONDS", "-60", "a whole number of seconds above 0"),
    ("MODELPRESS_MAX_CONCURRENT_JOBS", "-1", "a whole number, 0 (no cap) or more"),
    ("MODELPRESS_DEFAULT_GPU", "-1", "a whole number of GPUs, 0 or more"),
    ("MODELPRESS_DEFAULT_GPU", "1.5", "a whole number of GPUs, 0 or more"),
    ("MODELPRESS_JOB_BACKOFF_LIMIT", "-2", "a whole number of retries, 0 or more"),
    ("MODELPRESS_JOB_RUN_AS_USER", "0", "a non-root user id, 1 to 2147483647"),
    ("MODELPRESS_JOB_RUN_AS_USER", str(2**31), "a non-root user id, 1 to 2147483647"),
    ("MODELPRESS_NAMESPACES", "ml,Team_B", "comma-separated Kubernetes namespace names"),
    ("MODELPRESS_PEERING_NAME", "Peers!", "a Kubernetes name (lowercase letters, digits and '-', at most 63)"),
    ("MODELPRESS_PROMETHEUS_URL", "prometheus:9090", 'an http:// or https:// URL, or "" for none'),
    ("MODELPRESS_JOB_IMAGE", "", "a container image reference"),
]


@pytest.mark.parametrize("name, value, allowed", BAD_SETTINGS, ids=[f"{n}={v}" for n, v, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_naming_the_variable_and_what_it_accepts(name: str, value: str, allowed: str) -> None:
    with pytest.raises(settings_mod.SettingsError) as err:
        settings_mod.from_env({name: value})
    assert str(err.value) == f"{name} must be {allowed}, got {value!r}"


def test_booleans_and_ports_that_mean_what_they_say_are_accepted() -> None:
    for word, meaning in (("true", True), ("false", False), ("1", True), ("0", False), ("False", False)):
        assert settings_mod.from_env({"MODELPRESS_STANDALONE": word}).standalone is meaning
    bounds = settings_mod.from_env({"MODELPRESS_METRICS_PORT": "0", "MODELPRESS_LIVENESS_PORT": "65535"})
    assert (bounds.metrics_port, bounds.liveness_port) == (0, 65535)  # 0 turns the endpoint off
    assert settings_mod.from_env({"MODELPRESS_JOB_TTL_SECONDS": "0"}).job_ttl_seconds == 0


def test_every_bad_setting_is_named_on_one_line() -> None:
    with pytest.raises(settings_mod.SettingsError) as err:
        settings_mod.from_env({"MODELPRESS_METRICS_PORT": "-1", "MODELPRESS_STANDALONE": "flase"})
    assert "\n" not in str(err.value)
    assert "MODELPRESS_METRICS_PORT must be" in str(err.value) and "MODELPRESS_STANDALONE must be" in str(err.value)


@pytest.mark.parametrize(
    "flag, value", [("--metrics-port", "-1"), ("--liveness-port", "70000"), ("--job-ttl-seconds", "-5")]
)
def test_bad_flags_are_named_as_flags(flag: str, value: str) -> None:
    with pytest.raises(settings_mod.SettingsError, match=f"^{flag} must be .*, got {value}$"):
        parse_flags(flag, value)


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_METRICS_PORT", "9000")
    monkeypatch.setenv("MODELPRESS_STANDALONE", "false")
    assert parse_flags().metrics_port == 9000 and not parse_flags().standalone
    flagged = parse_flags("--metrics-port", "9100", "--standalone")
    assert flagged.metrics_port == 9100 and flagged.standalone
    # A bad variable that a flag overrides does not stop the operator.
    monkeypatch.setenv("MODELPRESS_METRICS_PORT", "-1")
    assert parse_flags("--metrics-port", "9100").metrics_port == 9100


def test_settings_stay_immutable_and_checked() -> None:
    settings = settings_mod.Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.metrics_port = 1  # type: ignore[misc]
    assert dataclasses.replace(settings, metrics_port=9100).metrics_port == 9100
    with pytest.raises(ValueError):
        dataclasses.replace(settings, metrics_port=-1)
