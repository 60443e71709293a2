"""`modelpress validate`'s checks: one clear line per bad input, never an exception."""

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpress import api
from modelpress.problems import Problem
from modelpress.validate import as_decoded, check_documents, check_object, check_text, jsonable, load_text, parse_object

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BASE_TEXT = (ROOT / "examples" / "quantize-dynamic.yaml").read_text()
BASE = yaml.safe_load(BASE_TEXT)


def _edit(old: str, new: str) -> str:
    assert old in BASE_TEXT
    return BASE_TEXT.replace(old, new, 1)


# (name, YAML text, field path of the one problem, words the message must contain)
BAD_INPUTS = [
    (
        "invalid YAML",
        _edit("task: classification", "task: [classification"),
        "line 12, column 14",
        "at line 11, column 11",
    ),
    ("tab indentation", _edit("  name: resnet18-int8", "\tname: resnet18-int8"), "line 5, column 1", "invalid YAML"),
    (
        "duplicate key",
        _edit("  namespace: ml", "  namespace: ml\n  namespace: prod"),
        "line 7, column 3",
        "duplicate key 'namespace'",
    ),
    (
        "wrong apiVersion",
        _edit("modelpress.io/v1alpha1", "modelpress.io/v1"),
        "apiVersion",
        "use modelpress.io/v1alpha1",
    ),
    ("wrong kind", _edit("kind: CompressedModel", "kind: Model"), "kind", "use CompressedModel"),
    ("unknown field", _edit("    metric: top5", "    metric: top5\n    metrc: f1"), "spec.validation.metrc", "unknown"),
    (
        "misspelt field",
        _edit("maxAccuracyDrop", "maxAcuracyDrop"),
        "spec.validation.maxAcuracyDrop",
        "did you mean maxAccuracyDrop?",
    ),
    ("wrong type", _edit("batchSize: 8", "batchSize: eight"), "spec.validation.batchSize", "must be an integer"),
    ("number as string", _edit("batchSize: 8", 'batchSize: "8"'), "spec.validation.batchSize", "must be an integer"),
    (
        "list for mapping",
        _edit("  output:\n    storageUri: s3://models/compressed/", "  output: [s3://x]"),
        "spec.output",
        "mapping",
    ),
    (
        "bad enum",
        _edit("mode: dynamic", "mode: int8"),
        "spec.compression.steps[0].quantize.mode",
        "dynamic, static, fp16",
    ),
    ("out of range", _edit("batchSize: 8", "batchSize: 0"), "spec.validation.batchSize", ">= 1"),
    ("bad storage URI", _edit("s3://models/resnet18", "ftp://models/resnet18"), "spec.source.storageUri", "s3://"),
    ("missing field", _edit("    task: classification\n", ""), "spec.source.task", "add task"),
    ("name too long", _edit("name: resnet18-int8", "name: " + "a" * 60), "metadata.name", "at most 54"),
    (
        "both budgets",
        _edit("{absolute: 0.01}", "{absolute: 0.01, relative: 0.01}"),
        "spec.validation.maxAccuracyDrop",
        "exactly one of absolute, relative",
    ),
    ("metric misfit", _edit("metric: top5", "metric: mse"), "spec.validation.metric", "accuracy, top5, f1"),
    (
        "static without calibration",
        _edit("mode: dynamic", "mode: static"),
        "spec.validation.calibration",
        "calibration",
    ),
    (
        "structured pruning of onnx",
        _edit("- quantize: {mode: dynamic, perChannel: true}", "- prune: {structure: channels, sparsity: 0.5}"),
        "spec.compression.steps[0].prune.structure",
        "unstructured",
    ),
    (
        "quantize not last",
        _edit("- quantize: {mode: dynamic, perChannel: true}", "- quantize: {}\n      - lowRank: {energy: 0.9}"),
        "spec.compression.steps[1]",
        "put quantize last",
    ),
    (
        "canary steps not increasing",
        _edit("  output:", "  serving: {rollout: {steps: [50, 20]}}\n  output:"),
        "spec.serving.rollout",
        "strictly increasing",
    ),
    (
        "quantity of the wrong type",
        _edit("  output:", "  job: {resources: {requests: {cpu: [2]}}}\n  output:"),
        "spec.job.resources.requests.cpu",
        "an integer or a string",
    ),
    ("not a mapping", "- just\n- a list\n", "", "not a mapping"),
    ("empty file", "", "", "no CompressedModel"),
]


@pytest.mark.parametrize("name, text, path, words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_each_bad_input_gives_one_clear_problem(name, text, path, words):
    problems = check_documents(text, "bad.yaml")
    assert len(problems) == 1, [p.line() for p in problems]
    (problem,) = problems
    assert problem.path == path
    line = problem.line()
    assert words in line, line
    assert line.startswith("bad.yaml ")
    assert "Traceback" not in line and "pydantic" not in line


def test_every_problem_of_a_document_is_listed():
    text = _edit("batchSize: 8", "batchSize: 0\n    metrc: f1").replace("mode: dynamic", "mode: int8")
    paths = sorted(p.path for p in check_documents(text, "f.yaml"))
    assert paths == ["spec.compression.steps[0].quantize.mode", "spec.validation.batchSize", "spec.validation.metrc"]


def test_multi_document_files_number_their_documents():
    other = BASE_TEXT.replace("name: resnet18-int8", "name: second").replace("batchSize: 8", "batchSize: -1")
    text = BASE_TEXT + "---\n" + other + "---\n"  # trailing empty document is ignored
    results = check_text(text, "many.yaml")
    assert [(r.document, r.name, r.valid) for r in results] == [(1, "resnet18-int8", True), (2, "second", False)]
    (problem,) = results[1].problems
    assert problem.line(show_document=True).startswith("many.yaml:doc 2 second: spec.validation.batchSize: got -1")


def test_yaml_error_in_a_later_document_keeps_earlier_results():
    results = check_text(BASE_TEXT + "---\nkind: [\n", "x.yaml")
    assert [r.valid for r in results] == [True, False]
    assert results[1].document == 2 and results[1].problems[0].message.startswith("invalid YAML")


def test_json_input_is_accepted():
    import json

    assert check_documents(json.dumps(BASE), "x.json") == []


def test_problem_line_format():
    p = Problem("spec.x", "got 1", "use 2", "f.yaml", 3, "demo")
    assert p.line() == "f.yaml demo: spec.x: got 1; use 2"
    assert p.line(show_document=True) == "f.yaml:doc 3 demo: spec.x: got 1; use 2"
    assert p.text() == "spec.x: got 1; use 2" and Problem("", "no spec").text() == "no spec"


def test_parse_object_gives_the_resource_or_the_same_problems():
    model, problems = parse_object(BASE)
    assert problems == [] and isinstance(model, api.CompressedModel)
    assert model.metadata.name == BASE["metadata"]["name"] and model.spec.validation.batch_size == 8
    bad = copy.deepcopy(BASE)
    bad["spec"]["validation"]["batchSize"] = 0
    model, problems = parse_object(bad)
    assert model is None and problems == check_object(bad) and problems[0].path == "spec.validation.batchSize"


def test_load_text_pairs_each_document_with_its_resource():
    bad = BASE_TEXT.replace("batchSize: 8", "batchSize: 0")
    loaded = load_text(BASE_TEXT + "---\n" + bad, "two.yaml")
    assert [(r.document, r.valid, m is not None) for r, m in loaded] == [(1, True, True), (2, False, False)]
    assert [r for r, _ in loaded] == check_text(BASE_TEXT + "---\n" + bad, "two.yaml")
    assert loaded[1][0].problems[0].source == "two.yaml" and loaded[1][0].problems[0].document == 2


# --------------------------------------------------------------------------- properties

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["onnx", "static", "s3://a/b", "5m", "-1", "1e9", "neurons", "", "True"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_examples(draw):
    """A valid example with a few fields replaced, removed or added: near-valid specs."""
    obj = copy.deepcopy(yaml.safe_load(draw(st.sampled_from(EXAMPLES)).read_text()))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(_values)
    return obj


def _assert_outcome(problems):
    assert isinstance(problems, list)
    for p in problems:
        assert isinstance(p, Problem) and isinstance(p.line(), str) and p.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_examples())
def test_near_valid_specs_never_crash_the_validator(obj):
    problems = check_object(obj)
    _assert_outcome(problems)
    if not problems:  # "valid" must mean the API types accept it, as the API server would store it (nulls pruned)
        api.CompressedModel.model_validate(as_decoded(jsonable(obj)))
    _assert_outcome(check_documents(yaml.safe_dump(obj), "f.yaml"))


@settings(max_examples=100, deadline=None)
@given(_values)
def test_arbitrary_documents_never_crash_the_validator(value):
    problems = check_object(value)
    _assert_outcome(problems)
    assert problems, "no arbitrary value is a CompressedModel"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | st.text(alphabet=":-[]{}'\"&*!|>#%@ \n\tab1", max_size=80))
def test_arbitrary_text_never_crashes_the_validator(text):
    _assert_outcome(check_documents(text, "t.yaml"))


def test_objects_read_back_from_the_api_server_are_valid():
    """What the operator gets: defaults applied, server metadata and an operator-written status."""
    from crd_check import apply_defaults

    from modelpress.crd import open_api_schema

    obj = apply_defaults(open_api_schema(), BASE)
    obj["metadata"].update(uid="0b6f", resourceVersion="42", generation=3, creationTimestamp="2026-01-01T00:00:00Z")
    obj["status"] = {
        "phase": "Validated",
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Validated"}],
        "results": {"passed": True, "sizeRatio": 0.26, "chosenRecipe": [{"quantize": {"mode": "dynamic"}}]},
    }
    assert check_object(obj) == []
    obj["status"]["phase"] = "Done"
    (problem,) = check_object(obj)
    assert problem.path == "status.phase" and "Validated" in problem.fix
