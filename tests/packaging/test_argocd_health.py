"""The Argo CD health check for CompressedModel, run by a real Lua 5.1 interpreter.

Argo CD embeds gopher-lua (Lua 5.1), sets the live object as the global ``obj`` and
takes the script's return value as the health; lupa's Lua 5.1 runtime runs the same
script unchanged, driven by the Argo CD-format ``health_test.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from lupa import lua51

from modelpress.api import CompressedModel, Phase

REPO = Path(__file__).resolve().parents[2]
HEALTH_DIR = REPO / "argocd" / "modelpress.io" / "CompressedModel"
SCRIPT = (HEALTH_DIR / "health.lua").read_text()
CASES = yaml.safe_load((HEALTH_DIR / "health_test.yaml").read_text())["tests"]
ARGOCD_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended"}


def run_health(obj: dict[str, Any], script: str = SCRIPT) -> dict[str, str]:
    """Evaluate the health script against ``obj`` as Argo CD does."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(script)
    assert hs is not None, "health script returned nothing"
    return {"status": hs["status"], "message": hs["message"]}


def load_case(path: str) -> dict[str, Any]:
    return yaml.safe_load((HEALTH_DIR / path).read_text())


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_test_yaml(case: dict[str, Any]) -> None:
    assert run_health(load_case(case["inputPath"])) == case["healthStatus"]


def test_every_status_is_covered_and_every_testdata_file_is_used() -> None:
    assert {c["healthStatus"]["status"] for c in CASES} == ARGOCD_STATUSES
    used = {Path(c["inputPath"]).name for c in CASES}
    assert used == {p.name for p in (HEALTH_DIR / "testdata").glob("*.yaml")}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_testdata_are_real_compressedmodels(case: dict[str, Any]) -> None:
    """The fixtures use the real spec and status types, so they cannot drift from the API."""
    CompressedModel.model_validate(load_case(case["inputPath"]))


def test_lagging_generation_beats_every_other_signal() -> None:
    obj = load_case("testdata/rejected.yaml")
    obj["metadata"]["generation"] = 5
    assert run_health(obj)["status"] == "Progressing"


def test_failure_beats_paused_rollout() -> None:
    obj = load_case("testdata/rolled-back.yaml")
    assert obj["spec"]["serving"]["rollout"]["paused"] is True
    assert run_health(obj)["status"] == "Degraded"


def test_paused_flag_is_ignored_when_serving_is_disabled() -> None:
    obj = load_case("testdata/serving.yaml")
    obj["spec"]["serving"]["rollout"]["paused"] = True
    assert run_health(obj)["status"] == "Suspended"
    obj["spec"]["serving"]["enabled"] = False
    assert run_health(obj)["status"] == "Healthy"


def test_script_uses_only_what_argocd_provides() -> None:
    """Argo CD's Lua sandbox has no io/os/require; the script must not reach for them."""
    assert not re.search(r"\b(io|os|require|dofile|loadfile|load)\b\s*[.(]", SCRIPT)


conditions = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["Ready", "SpecValid", "Compressed", "Validated", "RolledOut"]),
            "status": st.sampled_from(["True", "False", "Unknown"]),
        },
        optional={
            "reason": st.text(max_size=8),
            "message": st.text(max_size=20),
            "observedGeneration": st.integers(1, 4),
        },
    ),
    max_size=5,
)
statuses = st.fixed_dictionaries(
    {},
    optional={
        "observedGeneration": st.integers(1, 4),
        "phase": st.sampled_from([p.value for p in Phase]),
        "conditions": conditions,
        "rollout": st.fixed_dictionaries({}, optional={"canaryPercent": st.integers(0, 99)}),
    },
)


@settings(max_examples=150, deadline=None)
@given(status=st.one_of(st.none(), statuses), generation=st.integers(1, 4), paused=st.booleans())
def test_any_status_gets_a_verdict_with_a_message(status: dict | None, generation: int, paused: bool) -> None:
    """Whatever the operator (or a half-written status) holds, the script answers, never errors."""
    obj = load_case("testdata/serving.yaml")
    obj["metadata"]["generation"] = generation
    obj["spec"]["serving"]["rollout"]["paused"] = paused
    obj.pop("status")
    if status is not None:
        obj["status"] = status
    hs = run_health(obj)
    assert hs["status"] in ARGOCD_STATUSES
    assert isinstance(hs["message"], str) and hs["message"]
    if hs["status"] == "Healthy":
        ready = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True" and status["observedGeneration"] >= generation


# ---------------------------------------------------------------- with the operator's own status logic


def finished_job(outcome: str, terminated: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = {"status": {"conditions": [{"type": outcome, "status": "True", "reason": "BackoffLimitExceeded"}]}}
    pod = {
        "metadata": {"creationTimestamp": "2026-11-22T10:00:00Z"},
        "status": {"containerStatuses": [{"state": {"terminated": terminated}}]},
    }
    return job, [pod]


def status_after(obj: dict[str, Any], job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The status the operator writes for a finished Job (operator/status.py, pure)."""
    from modelpress.operator import status as st

    fields, conditions, _event = st.outcome_status(obj["spec"], job, pods)
    gen = obj["metadata"]["generation"]
    return dict(
        fields, observedGeneration=gen, conditions=st.merge_conditions(None, conditions, gen, "2026-11-22T10:00:00Z")
    )


@pytest.mark.parametrize(
    ("serving", "summary", "terminated", "expected"),
    [
        (False, {"outcome": "Validated", "reason": "ok"}, {"exitCode": 0}, "Healthy"),
        (True, {"outcome": "Validated", "reason": "ok"}, {"exitCode": 0}, "Progressing"),
        (
            False,
            {"outcome": "Rejected", "reason": "too lossy", "results": {"failedThresholds": ["maxAccuracyDrop"]}},
            {"exitCode": 3},
            "Degraded",
        ),
        (False, None, {"exitCode": 137, "reason": "OOMKilled"}, "Degraded"),
    ],
    ids=["validated-no-serving", "validated-awaiting-rollout", "rejected", "oom-killed"],
)
def test_health_of_statuses_the_operator_really_writes(
    serving: bool, summary: dict | None, terminated: dict, expected: str
) -> None:
    from modelpress.summary import JobSummary

    obj = load_case("testdata/serving.yaml")
    obj.pop("status")
    if not serving:
        obj["spec"].pop("serving")
    if summary is not None:
        terminated = dict(terminated, message=JobSummary.model_validate(summary).to_termination_message())
    job, pods = finished_job("Complete" if terminated["exitCode"] == 0 else "Failed", terminated)
    obj["status"] = status_after(obj, job, pods)
    hs = run_health(obj)
    assert hs["status"] == expected, (hs, obj["status"])
    if expected == "Degraded":
        assert ("maxAccuracyDrop" if summary else "OOMKilled") in hs["message"]
