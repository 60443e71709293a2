"""Check objects against a CRD schema offline, the way the API server would.

Without a cluster we still want to know that the generated CRD accepts exactly what
the pydantic types accept. This module reproduces the API server's handling of a
structural ``openAPIV3Schema`` closely enough for that comparison:

* :func:`structural_problems` — the "structural schema" rules a CRD must obey;
* :func:`apply_defaults` — null pruning and defaulting, applied before validation;
* :func:`schema_errors` — OpenAPI validation (OpenAPI v3.0 is JSON Schema draft 4 with
  a few Kubernetes extensions, so ``jsonschema``'s Draft4Validator does the work; the
  uniqueness of ``x-kubernetes-list-type: map`` keys is checked by hand);
* :func:`cel_failures` — every ``x-kubernetes-validations`` rule evaluated with
  ``cel-python`` (imported lazily: it is a development dependency only).

Hand-written rather than borrowed because no Python library implements the API
server's structural-schema defaulting or its CEL attachment points.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft4Validator, FormatChecker

# The OpenAPI keys a structural CRD schema may use (plus the x-kubernetes-* ones).
ALLOWED_KEYS = {
    "type",
    "description",
    "properties",
    "additionalProperties",
    "items",
    "required",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "pattern",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "format",
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
LIST_TYPES = {"atomic", "set", "map"}


def structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    """Every way ``node`` breaks the structural-schema rules (empty list: structural)."""
    out: list[str] = []
    where = path or "<root>"
    unknown = sorted(set(node) - ALLOWED_KEYS)
    if unknown:
        out.append(f"{where}: keys not allowed in a structural schema: {', '.join(unknown)}")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if int_or_string and "type" in node:
        out.append(f"{where}: x-kubernetes-int-or-string must not set type")
    if not node.get("type") and not (int_or_string or preserve):
        out.append(f"{where}: no type")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{where}: properties and additionalProperties are mutually exclusive")
    if node.get("type") == "array":
        if not isinstance(node.get("items"), dict):
            out.append(f"{where}: array without a single items schema")
        else:
            out += structural_problems(node["items"], f"{path}[]")
            out += _list_type_problems(node, where)
    if node.get("type") == "object" and not ("properties" in node or "additionalProperties" in node or preserve):
        if path != ".metadata":  # the root's metadata is the one untyped-content object allowed
            out.append(f"{where}: object without properties, additionalProperties or preserve-unknown-fields")
    for key, sub in node.get("properties", {}).items():
        out += structural_problems(sub, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        out += structural_problems(node["additionalProperties"], f"{path}.*")
    for name in node.get("required", []):
        if name not in node.get("properties", {}):
            out.append(f"{where}: required field {name} is not declared")
    if "default" in node:
        errors = schema_errors(node, node["default"])
        if errors:
            out.append(f"{where}: default does not validate: {errors[0]}")
    return out


def _list_type_problems(node: dict[str, Any], where: str) -> list[str]:
    """The API server's rules for ``x-kubernetes-list-type`` (map keys: required or defaulted scalars)."""
    list_type = node.get("x-kubernetes-list-type")
    keys = node.get("x-kubernetes-list-map-keys")
    if list_type is None:
        return [f"{where}: x-kubernetes-list-map-keys without x-kubernetes-list-type: map"] if keys else []
    if list_type not in LIST_TYPES:
        return [f"{where}: x-kubernetes-list-type must be one of {sorted(LIST_TYPES)}"]
    if list_type != "map":
        return [f"{where}: x-kubernetes-list-map-keys needs x-kubernetes-list-type: map"] if keys else []
    items = node["items"]
    if items.get("type") != "object" or not keys:
        return [f"{where}: a list of type map needs object items and x-kubernetes-list-map-keys"]
    out = []
    for key in keys:
        prop = items.get("properties", {}).get(key)
        if prop is None or prop.get("type") not in ("string", "integer", "number", "boolean"):
            out.append(f"{where}: map key {key} must be a scalar property of the items")
        elif key not in items.get("required", []) and "default" not in prop:
            out.append(f"{where}: map key {key} must be required or have a default")
    return out


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """A copy of ``value`` with nulls pruned and schema defaults filled in (recursively)."""
    value = copy.deepcopy(value)
    _default_into(node, value)
    return value


def _default_into(node: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key in [k for k, v in value.items() if v is None and k in props]:
            del value[key]  # the API server prunes nulls of non-nullable fields
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default_into(sub, value[key])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                _default_into(extra, item)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _default_into(node["items"], item)


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI (structural) -> JSON Schema draft 4, with unknown fields forbidden.

    kubectl applies with ``--validate=strict`` by default, so unknown fields are errors
    rather than silently pruned; the translation models that. ``metadata`` (an object
    with no properties in a CRD) stays open: the API server checks it as ObjectMeta.
    """
    out: dict[str, Any] = {}
    for key, sub in node.items():
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in sub.items()}
        elif key in ("items", "additionalProperties") and isinstance(sub, dict):
            out[key] = to_json_schema(sub)
        elif not key.startswith("x-kubernetes-"):
            out[key] = sub
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


# The API server checks the formats of its strfmt registry; date-time is the one this CRD uses.
FORMATS = FormatChecker(formats=["date-time"])


def schema_errors(node: dict[str, Any], value: Any) -> list[str]:
    """OpenAPI validation errors of ``value`` (as ``path: message``), sorted; list-map duplicates included."""
    validator = Draft4Validator(to_json_schema(node), format_checker=FORMATS)
    errors = [
        f"{''.join(f'[{p}]' if isinstance(p, int) else f'.{p}' for p in e.absolute_path) or '.'}: {e.message}"
        for e in validator.iter_errors(value)
    ]
    return sorted(errors + _duplicate_map_keys(node, value, ""))


def _duplicate_map_keys(node: dict[str, Any], value: Any, path: str) -> list[str]:
    """Entries of an ``x-kubernetes-list-type: map`` list that repeat another's keys (the API server's
    "Duplicate value"); JSON Schema cannot say "unique by these keys", so it is checked here."""
    out: list[str] = []
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if key in value:
                out += _duplicate_map_keys(sub, value[key], f"{path}.{key}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                out += _duplicate_map_keys(extra, item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        keys = node.get("x-kubernetes-list-map-keys") if node.get("x-kubernetes-list-type") == "map" else None
        seen: set[tuple[Any, ...]] = set()
        for i, item in enumerate(value):
            if keys and isinstance(item, dict):
                identity = tuple(item.get(k) for k in keys)
                if identity in seen:
                    named = ", ".join(f"{k}={v!r}" for k, v in zip(keys, identity, strict=True))
                    out.append(f"{path}[{i}]: Duplicate value: {named}")
                seen.add(identity)
            out += _duplicate_map_keys(node["items"], item, f"{path}[{i}]")
    return out


@dataclass(frozen=True)
class CelFailure:
    path: str
    rule: str
    message: str


def cel_rules(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, str]]]:
    """Every ``x-kubernetes-validations`` entry in the schema, with its node path."""
    out = [(path, rule) for rule in node.get("x-kubernetes-validations", [])]
    for key, sub in node.get("properties", {}).items():
        out += cel_rules(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        out += cel_rules(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += cel_rules(node["additionalProperties"], f"{path}.*")
    return out


class CelEvaluator:
    """Compiles each rule once; evaluates a (defaulted) object against all of them."""

    def __init__(self) -> None:
        import celpy  # development dependency; only the CEL checks need it

        self._celpy = celpy
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}

    def program(self, rule: str) -> Any:
        if rule not in self._programs:
            self._programs[rule] = self._env.program(self._env.compile(rule))
        return self._programs[rule]

    def holds(self, rule: str, value: Any) -> bool:
        """True when the rule evaluates to true; errors count as failure, as in the API server."""
        try:
            result = self.program(rule).evaluate({"self": self._celpy.json_to_cel(value)})
        except self._celpy.CELEvalError:
            return False
        return result is True or (isinstance(result, self._celpy.celtypes.BoolType) and bool(result))

    def failures(self, node: dict[str, Any], value: Any, path: str = "") -> list[CelFailure]:
        out = [
            CelFailure(path + rule.get("fieldPath", ""), rule["rule"], rule["message"])
            for rule in node.get("x-kubernetes-validations", [])
            if not self.holds(rule["rule"], value)
        ]
        if isinstance(value, dict):
            for key, sub in node.get("properties", {}).items():
                if key in value:
                    out += self.failures(sub, value[key], f"{path}.{key}")
            extra = node.get("additionalProperties")
            if isinstance(extra, dict):
                for key, item in value.items():
                    out += self.failures(extra, item, f"{path}.{key}")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                out += self.failures(node["items"], item, f"{path}[{i}]")
        return out


def api_server_verdict(schema: dict[str, Any], obj: dict[str, Any], evaluator: CelEvaluator) -> list[str]:
    """What the API server would say about creating ``obj``: [] when it is accepted.

    Defaulting first, then OpenAPI validation; CEL runs only on schema-valid objects
    (the API server does not evaluate rules on data of the wrong shape).
    """
    defaulted = apply_defaults(schema, obj)
    errors = schema_errors(schema, defaulted)
    if errors:
        return errors
    return [f"{f.path or '.'}: {f.message}" for f in evaluator.failures(schema, defaulted)]
