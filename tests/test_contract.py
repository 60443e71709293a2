"""The job <-> operator contract: recipe hash and the termination-message summary."""

import json

import pytest
from helpers import MINIMAL_SPEC

from modelpress.api import CompressedModelSpec, Results, recipe_hash
from modelpress.summary import TERMINATION_MESSAGE_LIMIT, ExitCode, JobSummary, Outcome

BASE = MINIMAL_SPEC


def spec(**overrides) -> CompressedModelSpec:
    data = json.loads(json.dumps(BASE))
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return CompressedModelSpec.model_validate(data)


def test_recipe_hash_ignores_explicit_defaults_and_non_recipe_sections():
    base = recipe_hash(spec())
    assert base == recipe_hash(spec(**{"compression.steps": [{"quantize": {"mode": "dynamic", "perChannel": False}}]}))
    assert base == recipe_hash(spec(**{"job.gpu": 1, "output.storageUri": "s3://elsewhere/"}))
    assert base == recipe_hash(spec(serving={"rollout": {"steps": [5, 50]}}))
    assert len(base) == 16 and int(base, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"source.storageUri": "s3://models/other.onnx"},
        {"compression.steps": [{"quantize": {"mode": "dynamic", "perChannel": True}}]},
        {"validation.maxAccuracyDrop": {"absolute": 0.02}},
        {"validation.batchSize": 32},
    ],
)
def test_recipe_hash_changes_with_the_recipe(change):
    assert recipe_hash(spec(**change)) != recipe_hash(spec())


def test_recipe_hash_counts_an_optional_field_only_when_set():
    calib = {"validation.calibration": {"storageUri": "s3://data/calib.npz", "format": "npz"}}
    plain = recipe_hash(spec(**calib))
    smoothed = recipe_hash(spec(**calib, **{"compression.steps": [{"quantize": {"smoothing": 0.75}}]}))
    assert plain != smoothed
    assert plain == recipe_hash(spec(**calib, **{"compression.steps": [{"quantize": {"smoothing": None}}]}))


def test_summary_exit_codes_are_distinct_and_documented():
    codes = {o: JobSummary(outcome=o).exit_code for o in Outcome}
    assert codes[Outcome.validated] == ExitCode.VALIDATED == 0
    assert codes[Outcome.rejected] == ExitCode.REJECTED
    assert codes[Outcome.failed] == ExitCode.FAILED
    assert len(set(codes.values())) == 3


def test_termination_message_always_fits_and_keeps_the_outcome():
    huge = JobSummary(
        outcome=Outcome.rejected,
        reason="x" * 10_000,
        results=Results(
            chosen_recipe=[{"quantize": {"excludeNodes": [f"node_{i}" for i in range(500)]}}],
            failed_thresholds=["maxAccuracyDrop: drop 0.2 > 0.01"] * 50,
            accuracy_drop=0.2,
        ),
    )
    text = huge.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = json.loads(text)
    assert parsed["outcome"] == "Rejected"
    assert parsed["results"]["accuracyDrop"] == 0.2
    assert JobSummary.model_validate(parsed).exit_code == ExitCode.REJECTED


def test_small_summary_round_trips_unchanged():
    s = JobSummary(outcome=Outcome.validated, recipe_hash="abc", results=Results(speedup=2.5, passed=True))
    assert JobSummary.model_validate_json(s.to_termination_message()) == s


def test_a_long_reason_is_cut_at_a_word_and_says_so():
    words = " ".join(f"word{i}" for i in range(2000))
    message = JobSummary(outcome=Outcome.failed, reason=words).to_termination_message()
    reason = json.loads(message)["reason"]
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT and reason.endswith("…")
    assert reason[:-1].split(" ")[-1] in words.split(" ")  # the last word is whole
