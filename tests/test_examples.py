"""Every example is valid three times over: pydantic, the CRD's OpenAPI schema, and its CEL rules."""

from pathlib import Path

import pytest
import yaml
from crd_check import CelEvaluator, apply_defaults, schema_errors

from modelpress import api
from modelpress.crd import open_api_schema
from modelpress.validate import check_documents

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SCHEMA = open_api_schema()


@pytest.fixture(scope="module")
def evaluator() -> CelEvaluator:
    return CelEvaluator()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_everywhere(path, evaluator):
    text = path.read_text()
    assert text.startswith("# Shows: "), "start each example with a '# Shows: ...' line saying what it demonstrates"
    obj = yaml.safe_load(text)
    model = api.CompressedModel.model_validate(obj)
    assert check_documents(text, path.name) == []
    defaulted = apply_defaults(SCHEMA, obj)
    assert schema_errors(SCHEMA, defaulted) == []
    assert evaluator.failures(SCHEMA, defaulted) == []
    assert model.metadata.name == obj["metadata"]["name"]


def test_schema_check_rejects_what_the_api_server_would():
    """The schema check can fail: a typo'd field and an out-of-range value are reported."""
    obj = yaml.safe_load(EXAMPLES[0].read_text())
    obj["spec"]["validation"]["batchSize"] = 0
    obj["spec"]["output"]["storageURI"] = obj["spec"]["output"].pop("storageUri")
    errors = schema_errors(SCHEMA, apply_defaults(SCHEMA, obj))
    assert any(e.startswith(".spec.validation.batchSize:") for e in errors), errors
    assert any("storageURI" in e for e in errors), errors


def test_examples_cover_every_method_and_the_full_pipeline():
    specs = [api.CompressedModel.model_validate(yaml.safe_load(p.read_text())).spec for p in EXAMPLES]
    methods = {step.method for spec in specs for step in spec.compression.steps}
    assert methods == set(api.METHODS)
    modes = {s.quantize.mode for spec in specs for s in spec.compression.steps if s.quantize}
    assert {"dynamic", "static"} <= modes
    assert any(s.prune and s.prune.structure != "unstructured" for spec in specs for s in spec.compression.steps)
    full = [
        spec
        for spec in specs
        if len(spec.compression.steps) == 4
        and spec.compression.search.enabled
        and spec.serving
        and spec.serving.rollout.strategy == "canary"
    ]
    assert full, "one example should run the whole pipeline with search and a canary rollout"
    assert full[0].source.task == "embedding" and full[0].validation.metric == "cosine"
