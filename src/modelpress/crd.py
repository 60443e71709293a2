"""Generate the CompressedModel CustomResourceDefinition from the API types.

The CRD is never written by hand: ``modelpress crd`` turns pydantic's JSON schema for
:mod:`modelpress.api` into a *structural* OpenAPI v3 schema, the dialect the API
server insists on (every node typed, no ``$ref``, no ``anyOf`` carrying types, no
nullable optionals). Pydantic's schema generator is kept as the source (rather than
walking the types ourselves) because it already knows every constraint; what follows
only translates dialects and adds what JSON Schema cannot express: defaults from
``default_factory``, CEL rules, printer columns and the status subresource.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from modelpress import api

# JSON-schema keys that carry meaning into the CRD; everything else (title, $defs,
# discriminator, ...) is pydantic bookkeeping.
_KEPT_KEYS = (
    "type",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "pattern",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "required",
    "format",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)

# Kubernetes schema keywords that pydantic's types have no word for, by (model, wire
# field name). Kept here next to the other CRD-only additions (printer columns, root
# rules) rather than as json_schema_extra on the API types, so that api.py stays plain
# pydantic; :func:`_check_field_extensions` fails the build when a named field is gone.
FIELD_EXTENSIONS: dict[tuple[type[BaseModel], str], dict[str, Any]] = {
    # One entry per condition type: server-side apply and strategic merges key on it,
    # and the API server refuses two conditions of the same type.
    (api.CompressedModelStatus, "conditions"): {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
    # RFC 3339 (the operator writes UTC with a Z); the API server checks the format.
    (api.Condition, "lastTransitionTime"): {"format": "date-time"},
}

# The Kubernetes type metadata, described as every built-in type's schema describes it.
TYPE_META: dict[str, dict[str, Any]] = {
    "apiVersion": {
        "type": "string",
        "description": f"Versioned schema of this object: {api.API_VERSION}.",
    },
    "kind": {"type": "string", "description": f"The REST resource this object represents: {api.KIND}."},
    "metadata": {
        "type": "object",
        "description": f"Standard object metadata; name is at most {api.MAX_NAME_LENGTH} characters "
        "(the compression Job is named <name>-<hash8>).",
    },
}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Recipe", "type": "string", "jsonPath": ".status.recipeHash", "priority": 1},
    {"name": "Size ratio", "type": "number", "jsonPath": ".status.results.sizeRatio"},
    {"name": "Accuracy drop", "type": "number", "jsonPath": ".status.results.accuracyDrop"},
    {"name": "Speedup", "type": "number", "jsonPath": ".status.results.speedup"},
    {"name": "Canary %", "type": "integer", "jsonPath": ".status.rollout.canaryPercent"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# Rules on the whole object: metadata.name can only be checked from the root in CEL
# (a CRD may not give metadata a schema of its own).
ROOT_RULES: list[dict[str, str]] = [
    api.cel(
        f"self.metadata.name.size() <= {api.MAX_NAME_LENGTH}",
        f"metadata.name must be at most {api.MAX_NAME_LENGTH} characters "
        "(the compression Job is named <name>-<hash8> and must fit 63)",
    ),
    api.cel(
        f"self.metadata.name.matches('{api.DNS1123_LABEL}')",
        "metadata.name must be a DNS-1123 label: lowercase letters, digits and '-', "
        "starting and ending with a letter or digit",
    ),
]


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from ``root``, by class name (= ``$defs`` key)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for field in tp.model_fields.values():
                visit(field.annotation)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return found


def _factory_defaults(models: dict[str, type[BaseModel]]) -> dict[str, dict[str, Any]]:
    """Wire-format defaults of fields declared with ``default_factory``, per model.

    Pydantic leaves these out of its JSON schema; the API server needs them so that
    what is stored equals what GitOps tools render (no perpetual drift).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        for field_name, field in model.model_fields.items():
            if field.default_factory is None:
                continue
            value = field.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                value = value.model_dump(by_alias=True, mode="json", exclude_none=True)
            out.setdefault(name, {})[field.alias or field_name] = value
    return out


class _Converter:
    """Translates pydantic's JSON schema into a structural OpenAPI v3 schema."""

    def __init__(self, schema: dict[str, Any], models: dict[str, type[BaseModel]]) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.models = models
        self.factory_defaults = _factory_defaults(models)
        self.extensions = {(model.__name__, field): extra for (model, field), extra in FIELD_EXTENSIONS.items()}

    def convert(self, node: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            target = self.convert(self.defs[name], model_name=name)
            return self._merge_outer(target, node)
        if "anyOf" in node:
            return self._union(node)

        out: dict[str, Any] = {k: node[k] for k in _KEPT_KEYS if k in node}
        if "default" in out and out["default"] is None:
            del out["default"]  # Optional fields are simply omitted, never null.
        if "exclusiveMinimum" in node:
            out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
        if "exclusiveMaximum" in node:
            out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
        if "enum" in node and "type" not in out:
            out["type"] = _enum_type(node["enum"])
        if out.get("type") == "string" and "enum" in out and "maxLength" not in out:
            # Bounds the strings for the API server's CEL cost estimator.
            out["maxLength"] = max(len(v) for v in out["enum"])

        kind = out.get("type")
        if kind == "object":
            self._object(node, out, model_name)
        elif kind == "array":
            out["items"] = self.convert(node.get("items", {}))
        return out

    def _object(self, node: dict[str, Any], out: dict[str, Any], model_name: str | None) -> None:
        props = node.get("properties")
        if props is not None:
            defaults = self.factory_defaults.get(model_name or "", {})
            out["properties"] = {}
            for key, sub in props.items():
                converted = self.convert(sub)
                if key in defaults:
                    converted["default"] = defaults[key]
                converted.update(self.extensions.get((model_name or "", key), {}))
                out["properties"][key] = converted
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:  # dict[str, X]
            out["additionalProperties"] = self.convert(extra)
        elif props is None:  # dict[str, Any]: keep whatever the user wrote
            out["x-kubernetes-preserve-unknown-fields"] = True
        if model_name and model_name in self.models:
            rules = getattr(self.models[model_name], "cel_rules", [])
            if rules:
                out["x-kubernetes-validations"] = [dict(r) for r in rules]

    def _union(self, node: dict[str, Any]) -> dict[str, Any]:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) == 1:  # Optional[X] -> X, omitted when unset
            return self._merge_outer(self.convert(options[0]), node)
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"]:  # Kubernetes quantities
            out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
            pattern = next((o["pattern"] for o in options if o.get("type") == "string" and "pattern" in o), None)
            if pattern:  # as controller-gen writes resource.Quantity: the pattern checks the string form
                out["pattern"] = pattern
            return self._merge_outer(out, node)
        raise ValueError(f"no structural equivalent for union {options}")

    def _merge_outer(self, inner: dict[str, Any], outer: dict[str, Any]) -> dict[str, Any]:
        """Field-level keys (description, default) win over the referenced type's."""
        merged = dict(inner)
        for key in ("description", "default"):
            if key in outer and outer[key] is not None:
                merged[key] = outer[key]
        return merged


def _enum_type(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "integer"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "number"
    return "string"


def _sorted(value: Any) -> Any:
    """Recursively sort mapping keys so the output is stable byte for byte."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _check_field_extensions() -> None:
    """Every :data:`FIELD_EXTENSIONS` entry names a field that exists (a rename must not drop it)."""
    for model, field in FIELD_EXTENSIONS:
        wire = {f.alias or name for name, f in model.model_fields.items()}
        if field not in wire:
            raise ValueError(f"FIELD_EXTENSIONS: {model.__name__} has no field {field!r}")


def _schema_for(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)
    return _Converter(raw, _models(model)).convert(raw, model_name=model.__name__)


def open_api_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD's single version."""
    _check_field_extensions()
    # spec and status take their descriptions from the models' docstrings.
    return {
        "type": "object",
        "description": "A model to compress, validate against an accuracy budget and roll out on KServe.",
        "required": ["spec"],
        "properties": {
            **{key: dict(value) for key, value in TYPE_META.items()},
            "spec": _schema_for(api.CompressedModelSpec),
            "status": _schema_for(api.CompressedModelStatus),
        },
        "x-kubernetes-validations": [dict(r) for r in ROOT_RULES],
    }


def build_crd() -> dict[str, Any]:
    """The CompressedModel CRD (apiextensions.k8s.io/v1) as a plain, sorted dict."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelpress"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }
    return _sorted(crd)


HEADER = "# Generated by `modelpress crd` from src/modelpress/api.py; do not edit. Regenerate with `make crd`.\n"


def render(output: str = "yaml") -> str:
    """The CRD as text, exactly as committed in ``crds/`` (yaml) or as JSON."""
    crd = build_crd()
    if output == "json":
        return json.dumps(crd, indent=2, sort_keys=True) + "\n"
    return HEADER + yaml.safe_dump(crd, sort_keys=True, default_flow_style=False, width=100, allow_unicode=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``modelpress crd``."""
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml", help="output format")


def crd_command(args: argparse.Namespace) -> int:
    sys.stdout.write(render(args.output))
    return 0
