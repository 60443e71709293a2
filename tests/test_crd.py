"""The committed CRD is generated from the API types, structural and accepted by Kubernetes' schema."""

import copy
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from crd_check import apply_defaults, schema_errors, structural_problems

from modelpress import api
from modelpress.crd import PRINTER_COLUMNS, build_crd, open_api_schema, render

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "compressedmodels.modelpress.io.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
K8S_VERSION = "1.30.0"


def _spec_schema() -> dict:
    return open_api_schema()["properties"]["spec"]


def _walk(node: dict, path: str = ""):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")


def test_committed_crd_is_the_generated_one():
    assert CRD_FILE.read_text() == render("yaml"), (
        "crds/compressedmodels.modelpress.io.yaml is out of date with modelpress/api.py: run `make crd` and commit it"
    )


def test_generation_is_deterministic():
    assert render("yaml") == render("yaml")
    assert json.loads(render("json")) == yaml.safe_load(render("yaml"))


def test_crd_names_versions_and_subresources():
    crd = build_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "compressedmodels.modelpress.io"
    assert spec["group"] == "modelpress.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "CompressedModel",
        "listKind": "CompressedModelList",
        "plural": "compressedmodels",
        "singular": "compressedmodel",
        "shortNames": ["cmodel"],
        "categories": ["modelpress"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [c["name"] for c in PRINTER_COLUMNS]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Recipe"]["priority"] == 1
    assert columns["Canary %"]["type"] == "integer" and columns["Age"]["type"] == "date"


def test_crd_is_structural():
    assert structural_problems(open_api_schema()) == []


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda s: s["properties"]["spec"]["properties"]["source"].pop("type"), ".spec.source: no type"),
        (lambda s: s["properties"]["spec"].update({"$ref": "#/x"}), "keys not allowed"),
        (lambda s: s["properties"]["spec"].update({"anyOf": [{"type": "string"}]}), "keys not allowed"),
        (lambda s: s["properties"]["spec"].update({"additionalProperties": {"type": "string"}}), "mutually exclusive"),
        (
            lambda s: s["properties"]["spec"]["properties"]["source"]["properties"]["format"].update(default="tf"),
            "default",
        ),
        (lambda s: _conditions(s)["items"]["required"].remove("type"), "map key type must be required"),
        (lambda s: _conditions(s).update({"x-kubernetes-list-map-keys": ["nope"]}), "map key nope must be a scalar"),
        (lambda s: _conditions(s).update({"x-kubernetes-list-type": "bag"}), "x-kubernetes-list-type must be"),
    ],
)
def test_structural_checker_catches_violations(break_it, expected):
    schema = copy.deepcopy(open_api_schema())
    break_it(schema)
    assert any(expected in p for p in structural_problems(schema)), structural_problems(schema)


def _conditions(schema: dict) -> dict:
    return schema["properties"]["status"]["properties"]["conditions"]


def _undescribed(node: dict, path: str = "") -> list[str]:
    """Every property (at any depth, in spec and status) whose schema has no description."""
    out = []
    for key, sub in node.get("properties", {}).items():
        if not str(sub.get("description", "")).strip():
            out.append(f"{path}.{key}")
        out += _undescribed(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += _undescribed(node[key], f"{path}[]" if key == "items" else f"{path}.*")
    return out


def test_every_field_is_described_for_kubectl_explain():
    """`kubectl explain compressedmodel.spec...` prints these: none may be blank."""
    schema = open_api_schema()
    assert _undescribed(schema) == []
    assert schema["properties"]["spec"]["description"] and schema["properties"]["status"]["description"]
    # the walk does look everywhere: a nested status field without one is found
    broken = copy.deepcopy(schema)
    del _conditions(broken)["items"]["properties"]["lastTransitionTime"]["description"]
    assert _undescribed(broken) == [".status.conditions[].lastTransitionTime"]


def test_descriptions_come_from_the_api_types():
    props = _spec_schema()["properties"]
    assert props["validation"]["properties"]["maxSizeMB"]["description"] == (
        api.Validation.model_fields["max_size_mb"].description
    )
    assert props["compression"]["description"] == api.CompressedModelSpec.model_fields["compression"].description
    # a model-typed field without its own description takes the model's docstring
    step = props["compression"]["properties"]["steps"]["items"]
    assert step["description"] == api.Step.__doc__


def test_conditions_are_a_map_keyed_by_type():
    conditions = _conditions(open_api_schema())
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    assert conditions["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"


@pytest.mark.parametrize(
    ("conditions", "error"),
    [
        ([{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-02T03:04:05Z"}], None),
        ([{"type": "Ready", "status": "True"}, {"type": "SpecValid", "status": "True"}], None),
        (
            [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}],
            ".conditions[1]: Duplicate value: type='Ready'",
        ),
        ([{"type": "Ready", "status": "True", "lastTransitionTime": "yesterday"}], "is not a 'date-time'"),
    ],
)
def test_api_server_refuses_duplicate_conditions_and_bad_times(conditions, error):
    status = open_api_schema()["properties"]["status"]
    errors = schema_errors(status, apply_defaults(status, {"conditions": conditions}))
    if error is None:
        assert errors == []
    else:
        assert len(errors) == 1 and error in errors[0], errors


def test_operator_timestamps_are_valid_date_times():
    from modelpress.operator.handlers import now

    status = open_api_schema()["properties"]["status"]
    condition = {"type": "Ready", "status": "True", "lastTransitionTime": now()}
    assert schema_errors(status, {"conditions": [condition]}) == []


def test_crd_is_a_valid_customresourcedefinition():
    crd = yaml.safe_load(CRD_FILE.read_text())
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    broken = copy.deepcopy(crd)
    broken["spec"]["versions"][0]["served"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_schema_dialect_translation():
    schema = _spec_schema()
    props = schema["properties"]
    distill = props["compression"]["properties"]["steps"]["items"]["properties"]["distill"]["properties"]
    # pydantic gt=0 -> OpenAPI minimum + exclusiveMinimum: true
    assert distill["temperature"]["minimum"] == 0 and distill["temperature"]["exclusiveMinimum"] is True
    assert distill["temperature"]["maximum"] == 100
    requests = props["job"]["properties"]["resources"]["properties"]["requests"]
    # int-or-string with the quantity pattern on its string form, as controller-gen writes resource.Quantity
    assert requests["additionalProperties"] == {"x-kubernetes-int-or-string": True, "pattern": api.QUANTITY_PATTERN}
    assert props["job"]["properties"]["nodeSelector"]["additionalProperties"] == {
        "type": "string",
        "pattern": api.LABEL_VALUE_PATTERN,
        "maxLength": 63,
    }
    assert props["source"]["properties"]["storageUri"]["pattern"] == api.STORAGE_URI_PATTERN
    assert props["compression"]["properties"]["steps"]["maxItems"] == 16
    assert props["source"]["properties"]["format"]["enum"] == [
        "onnx",
        "pytorch-export",
        "hf-transformers",
        "sklearn",
        "xgboost",
        "lightgbm",
    ]
    recipe = open_api_schema()["properties"]["status"]["properties"]["results"]["properties"]["chosenRecipe"]
    assert recipe["items"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    for path, node in _walk(open_api_schema()):
        assert "default" not in node or node["default"] is not None, f"{path}: null default"
        assert "nullable" not in node, path


def test_defaults_include_default_factory_objects():
    props = _spec_schema()["properties"]
    assert props["compression"]["properties"]["search"]["default"] == {
        "enabled": False,
        "maxTrials": 8,
        "objective": "latency",
    }
    rollout = props["serving"]["properties"]["rollout"]
    assert rollout["properties"]["steps"]["default"] == [10, 25, 50]
    assert rollout["default"]["analysis"]["maxErrorRate"] == 0.01


def test_every_models_cel_rules_are_attached_to_its_node():
    schema = open_api_schema()
    attached = {rule["rule"] for _, node in _walk(schema) for rule in node.get("x-kubernetes-validations", [])}
    declared = {
        rule["rule"]
        for model in (api.StudentSpec, api.LowRank, api.Step, api.AccuracyDrop, api.Autoscaling, api.PromQuery)
        + (api.Rollout, api.CompressedModelSpec)
        for rule in model.cel_rules
    }
    assert declared <= attached
    assert any("self.metadata.name.size() <= 54" == r["rule"] for r in schema["x-kubernetes-validations"])
    step = _spec_schema()["properties"]["compression"]["properties"]["steps"]["items"]
    assert step["x-kubernetes-validations"] == api.Step.cel_rules


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_schema_defaults_equal_pydantic_defaults(example):
    """What the API server stores (defaults applied) is what pydantic reads: no GitOps drift."""
    spec = yaml.safe_load(example.read_text())["spec"]
    by_server = apply_defaults(_spec_schema(), spec)
    by_pydantic = api.CompressedModelSpec.model_validate(spec).model_dump(by_alias=True, mode="json", exclude_none=True)
    assert by_server == by_pydantic


def test_committed_spec_reference_is_the_generated_one():
    from modelpress import docs

    committed = (ROOT / "docs" / "spec-reference.md").read_text()
    assert committed == docs.render(), (
        "docs/spec-reference.md is out of date: run `.venv/bin/python -m modelpress.docs > docs/spec-reference.md`"
    )
    for path, _ in _walk(_spec_schema(), "spec"):
        if path != "spec" and not path.endswith(("[]", "*")):  # list items and map values have no row
            assert f"| `{path}` |" in committed, f"{path} missing from the reference"
