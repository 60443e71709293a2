"""Turn pydantic validation errors into one readable line per problem.

Pydantic's own messages name the rule ("Input should be less than or equal to 0.95")
but neither the value the user wrote nor what they could write instead, and its error
locations carry internal union tags. A user fixing a YAML file wants
``spec.compression.steps[0].prune.sparsity: got 1.5; allowed: 0 to 0.95``. This module
walks the API types along each error location to name the field, list the allowed
fields or values, and merge duplicates, so every problem reads the same way in
``modelpress validate``, the operator's SpecValid condition and the job's errors.
"""

from __future__ import annotations

import difflib
import enum
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ValidationError

from modelpress import api

# Friendly descriptions of the API's regular expressions.
PATTERN_HINTS: dict[str, str] = {
    api.STORAGE_URI_PATTERN: "use a storage URI starting with s3://, gs://, pvc://<claim>/ (the claim's "
    "DNS-1123 name), http(s):// or file://",
    api.OUTPUT_URI_PATTERN: "artifacts are written to s3://, gs://, pvc://<claim>/ or file:// (https:// is read-only)",
    r"^([0-9]+(ms|s|m|h))+$": "use a duration such as 30s, 5m or 1h30m",
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": "use a DNS-1123 label: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit",
    r"^https?://.+": "use an http:// or https:// URL",
    r"^[a-zA-Z_][a-zA-Z0-9_]*$": "use letters, digits and '_', not starting with a digit",
    api.QUANTITY_PATTERN: "use a Kubernetes quantity such as 500m, 2, 1.5 or 16Gi",
    api.LABEL_VALUE_PATTERN: "use a label value: letters, digits, '-', '_' or '.', starting and ending with a "
    "letter or digit",
    api.DNS1123_SUBDOMAIN: "use a DNS-1123 subdomain: lowercase letters, digits, '-' and '.'",
}

# Why a limit is what it is, where the rule alone would puzzle (appended to the fix).
FIELD_REASONS: dict[str, str] = {
    "metadata.name": "the compression Job is named <name>-<hash8> and Job names must fit 63 characters",
}

TYPE_WORDS: dict[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one document, located by its field path."""

    path: str
    message: str
    fix: str = ""
    source: str = ""
    document: int | None = None
    name: str = ""

    def line(self, show_document: bool = False) -> str:
        """``FILE[:doc N] NAME: PATH: WHAT; FIX`` — the format ``modelpress validate`` prints."""
        where = self.source + (f":doc {self.document}" if show_document and self.document else "")
        head = f"{where} {self.name or '<unnamed>'}".strip()
        return f"{head}: {self.text()}"

    def text(self) -> str:
        """``PATH: WHAT; FIX`` — the line without its file and name (the operator's condition)."""
        text = f"{self.path}: {self.message}" if self.path else self.message
        return text + (f"; {self.fix}" if self.fix else "")

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "fix": self.fix}


_UNIONS = (typing.Union, types.UnionType)


@dataclass
class _Node:
    """Where an error location points inside the API types."""

    path: str = ""
    annotation: Any = None
    constraints: list[Any] = field(default_factory=list)
    parent_model: type[BaseModel] | None = None


def _unwrap(tp: Any, constraints: list[Any]) -> Any:
    """Strip Annotated (keeping its constraints) and Optional."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            args = typing.get_args(tp)
            constraints.extend(_flatten_metadata(args[1:]))
            tp = args[0]
        elif origin in _UNIONS:
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _flatten_metadata(items: Any) -> list[Any]:
    """``Field(ge=1)`` inside Annotated carries its constraints in ``.metadata``."""
    out: list[Any] = []
    for item in items:
        if hasattr(item, "metadata"):
            out.extend(item.metadata)
        else:
            out.append(item)
    return out


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in _UNIONS


def _segment(key: Any) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    text = str(key)
    return f".{text}" if text.replace("_", "").replace("-", "").isalnum() else f"[{text!r}]"


def resolve(root: type[BaseModel], loc: tuple[Any, ...]) -> _Node:
    """Follow ``loc`` through the types: display path, annotation and constraints there."""
    node = _Node(annotation=root)
    for key in loc:
        tp = _unwrap(node.annotation, [])
        if _is_union(tp):
            continue  # pydantic tags each union member in the location; not a field
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fld = next((f for n, f in tp.model_fields.items() if (f.alias or n) == key or n == key), None)
            node = _Node(
                path=node.path + _segment(key),
                annotation=fld.annotation if fld else None,
                constraints=list(fld.metadata) if fld else [],
                parent_model=tp,
            )
            continue
        args = typing.get_args(tp)
        origin = typing.get_origin(tp)
        if origin is list and args:
            node = _Node(path=node.path + _segment(key), annotation=args[0], parent_model=node.parent_model)
        elif origin is dict and len(args) == 2:
            node = _Node(path=node.path + _segment(key), annotation=args[1], parent_model=node.parent_model)
        else:
            node = _Node(path=node.path + _segment(key), parent_model=node.parent_model)
    node.constraints = node.constraints + _unwrap_constraints(node.annotation)
    node.path = node.path.lstrip(".")
    return node


def _unwrap_constraints(tp: Any) -> list[Any]:
    constraints: list[Any] = []
    _unwrap(tp, constraints)
    return constraints


def allowed_values(tp: Any) -> list[str]:
    """Enum or Literal values of a field, for 'use one of' hints."""
    tp = _unwrap(tp, [])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [str(m.value) for m in tp]
    if typing.get_origin(tp) is Literal:
        return [str(v) for v in typing.get_args(tp)]
    return []


def _fields_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _range(constraints: list[Any]) -> str:
    low = high = None
    for c in constraints:
        if isinstance(c, annotated_types.Ge):
            low = f">= {c.ge}"
        elif isinstance(c, annotated_types.Gt):
            low = f"> {c.gt}"
        elif isinstance(c, annotated_types.Le):
            high = f"<= {c.le}"
        elif isinstance(c, annotated_types.Lt):
            high = f"< {c.lt}"
    return " and ".join(x for x in (low, high) if x)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}.get(
        type(value), f"a {type(value).__name__}"
    )


def explain(root: type[BaseModel], error: dict[str, Any]) -> Problem:
    """One pydantic error (``ValidationError.errors()`` item) as a Problem."""
    problem = _explain(root, error)
    why = FIELD_REASONS.get(problem.path)
    return Problem(problem.path, problem.message, f"{problem.fix} ({why})" if why else problem.fix)


def _explain(root: type[BaseModel], error: dict[str, Any]) -> Problem:
    node = resolve(root, tuple(error["loc"]))
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    last = str(error["loc"][-1]) if error["loc"] else ""

    if kind == "missing":
        return Problem(node.path, "required field is missing", f"add {last}")
    if kind == "extra_forbidden":
        allowed = _fields_of(node.parent_model) if node.parent_model else []
        close = difflib.get_close_matches(last, allowed, n=1, cutoff=0.6)
        fix = (f"did you mean {close[0]}? " if close else "") + (
            f"allowed fields here: {', '.join(allowed)}" if allowed else "remove it"
        )
        return Problem(node.path, f"unknown field {last!r}", fix)
    if kind in ("enum", "literal_error"):
        values = allowed_values(node.annotation) or [ctx.get("expected", "")]
        return Problem(node.path, f"got {_shown(value)}", f"use one of: {', '.join(values)}")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = _range(node.constraints) or error["msg"].replace("Input should be ", "")
        return Problem(node.path, f"got {_shown(value)}; out of range", f"allowed: {bounds}")
    if kind in TYPE_WORDS:
        got = "got null" if value is None else f"got {_type_name(value)} {_shown(value)}"
        return Problem(node.path, got, f"must be {TYPE_WORDS[kind]}")
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        return Problem(node.path, f"got {_shown(value)}", PATTERN_HINTS.get(pattern, f"must match {pattern}"))
    if kind in ("string_too_short", "too_short"):
        return Problem(node.path, f"too short ({_shown(value)})", f"needs at least {ctx.get('min_length')}")
    if kind in ("string_too_long", "too_long"):
        return Problem(node.path, "too long", f"allowed at most {ctx.get('max_length')}")
    if kind == "value_error":
        return Problem(node.path, str(ctx.get("error", error["msg"])))
    return Problem(node.path, error["msg"])


def from_validation_error(root: type[BaseModel], exc: ValidationError) -> list[Problem]:
    """All problems of one ValidationError, one per field path.

    A misspelt field is one problem ("unknown field ...; did you mean ..."), not also
    a "required field is missing" for the field it was meant to be. A value that fits
    no member of a union (e.g. a quantity that is neither an integer
    nor a string) makes pydantic report once per member; those merge into one line.
    """
    merged: dict[str, Problem] = {}
    for error in _without_typo_twins(exc.errors()):
        problem = explain(root, error)
        seen = merged.get(problem.path)
        if seen is None:
            merged[problem.path] = problem
        elif seen.fix.startswith("must be ") and problem.fix.startswith("must be "):
            merged[problem.path] = Problem(seen.path, seen.message, f"{seen.fix} or {problem.fix[len('must be ') :]}")
        elif seen.fix.startswith("must be ") or problem.fix.startswith("must be "):
            # One union member had the value's type and refused its content ('lots' is a
            # string but no quantity): that one says what to fix, the other's type clash does not.
            merged[problem.path] = problem if seen.fix.startswith("must be ") else seen
        else:
            merged[problem.path + f"#{len(merged)}"] = problem
    return list(merged.values())


def _without_typo_twins(errors: list[Any]) -> list[Any]:
    """Drop 'missing' errors whose field is the likely intent of an unknown sibling field."""
    missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
    meant: set[tuple[Any, ...]] = set()
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] != "extra_forbidden" or not loc:
            continue
        siblings = [str(m[-1]) for m in missing if m[:-1] == loc[:-1]]
        close = difflib.get_close_matches(str(loc[-1]), siblings, n=1, cutoff=0.6)
        if close:
            meant.add((*loc[:-1], close[0]))
    return [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in meant)]
