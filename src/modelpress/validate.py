"""``modelpress validate``: check CompressedModel files and list every problem.

Checks are those the API server would make at ``kubectl apply`` time, and then some:
YAML syntax (with line and column, duplicate keys included), the size, nesting and alias
limits of :mod:`modelpress.spec_io`, apiVersion/kind, unknown
fields, types (strictly: ``"8"`` is not an integer, as in the API server), ranges,
enums and the cross-field rules of :func:`modelpress.api.semantic_problems`, each
reported with its own field path. The pure functions :func:`check_documents`,
:func:`check_object` and :func:`parse_object` return :class:`~modelpress.problems.Problem`
lists for reuse by the operator (SpecValid condition, ``modelpress render``), so every
entry point words a problem the same way; nothing here raises on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError, model_validator

from modelpress import api, spec_io
from modelpress.output import add_output_argument, dump
from modelpress.problems import PATTERN_HINTS, Problem, from_validation_error


class _SpecFieldsOnly(api.CompressedModelSpec):
    """The spec without its combined cross-field validator.

    ``CompressedModelSpec`` joins all cross-field messages into one error at ``spec``;
    validating fields with this subclass and then calling ``semantic_problems`` reports
    each rule at its own field path instead.
    """

    @model_validator(mode="after")
    def _cross_field(self) -> _SpecFieldsOnly:
        return self


class _ResourceFieldsOnly(api.CompressedModel):
    spec: _SpecFieldsOnly


@dataclass
class DocumentResult:
    """The outcome for one YAML document of one file."""

    source: str
    document: int
    name: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "document": self.document,
            "name": self.name,
            "valid": self.valid,
            "problems": [p.as_dict() for p in self.problems],
        }


def jsonable(value: Any) -> Any:
    """YAML data as JSON data, the way kubectl converts it (keys become strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON (and so the API server) has no NaN/Infinity
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # timestamps, binary, sets: kubectl sends them as strings


# ObjectMeta's fields (k8s.io/apimachinery meta/v1): anything else in metadata is an
# unknown field, which the API server refuses under kubectl's strict field validation.
OBJECT_META_FIELDS = frozenset(
    {
        *("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation"),
        *("creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations"),
        *("ownerReferences", "finalizers", "managedFields"),
    }
)
# The API server appends 5 random characters to generateName; these stand in for them.
GENERATED_SUFFIX = "xxxxx"


def as_decoded(value: Any) -> Any:
    """What the API server keeps of a JSON value before validating it.

    Nulls are pruned where the schema does not say ``nullable`` (none of this API's
    fields do), so ``job: null`` means "unset" and takes the default; and a whole
    number written as a float (``gpu: 1.0``) passes as an integer, as it does in
    OpenAPI validation (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#defaulting-and-nullable).
    """
    if isinstance(value, dict):
        return {k: as_decoded(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [as_decoded(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _metadata_problems(obj: dict[str, Any]) -> list[Problem]:
    """Unknown metadata fields and labels the API server would refuse; fills a generated name in."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return []
    problems = [
        Problem(f"metadata.{k}", "unknown field", "the API server refuses it; remove it (labels or annotations?)")
        for k in meta
        if k not in OBJECT_META_FIELDS
    ]
    labels = meta.get("labels")
    if isinstance(labels, dict):
        problems += [Problem("metadata.labels", p) for p in api.label_key_problems("labels", labels)]
        problems += [
            Problem(f"metadata.labels.{k}", f"got {v!r}", PATTERN_HINTS[api.LABEL_VALUE_PATTERN])
            for k, v in labels.items()
            if not isinstance(v, str) or len(v) > 63 or not re.match(api.LABEL_VALUE_PATTERN, v)
        ]
    if "name" not in meta and isinstance(meta.get("generateName"), str):
        meta["name"] = meta["generateName"] + GENERATED_SUFFIX
    return problems


def _name_of(obj: Any) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name", meta.get("generateName")) if isinstance(meta, dict) else None
    return name if isinstance(name, str) else ""


def check_object(obj: Any) -> list[Problem]:
    """Every problem of one parsed resource (a dict from YAML or JSON); [] when valid."""
    return parse_object(obj)[1]


def parse_object(obj: Any) -> tuple[api.CompressedModel | None, list[Problem]]:
    """(the resource as API types, []) when valid, else (None, every problem)."""
    if not isinstance(obj, Mapping):
        return None, [
            Problem(
                "",
                f"the document is {type(obj).__name__}, not a mapping",
                "write a CompressedModel mapping (apiVersion, kind, metadata, spec)",
            )
        ]
    try:  # before anything recursive walks it (YAML was checked while read; JSON from the API server was not)
        spec_io.check_data(obj)
    except spec_io.SpecError as exc:
        return None, [exc.problem]
    obj = as_decoded(jsonable(dict(obj)))
    generated = isinstance(obj.get("metadata"), dict) and "name" not in obj["metadata"]
    meta_problems = _metadata_problems(obj)
    identity = []
    if obj.get("apiVersion") != api.API_VERSION:
        identity.append(Problem("apiVersion", f"got {obj.get('apiVersion')!r}", f"use {api.API_VERSION}"))
    if obj.get("kind") != api.KIND:
        identity.append(Problem("kind", f"got {obj.get('kind')!r}", f"use {api.KIND}"))
    if identity:  # not a CompressedModel: its fields would only add noise
        return None, identity
    try:
        resource = _ResourceFieldsOnly.model_validate_json(json.dumps(obj), strict=True)
    except ValidationError as exc:
        problems = from_validation_error(api.CompressedModel, exc)
        if generated:  # the name was made from generateName: that is what the user can fix
            problems = [replace(p, path="metadata.generateName") if p.path == "metadata.name" else p for p in problems]
        return None, meta_problems + problems
    problems = meta_problems + [
        Problem(f"spec.{path}", message) for path, message in api.semantic_problems(resource.spec)
    ]
    return (None, problems) if problems else (api.CompressedModel.model_validate(obj), [])


def check_text(text: str, source: str) -> list[DocumentResult]:
    """Results for every document in a (multi-document) YAML or JSON text."""
    return [result for result, _ in load_text(text, source)]


def load_text(text: str, source: str) -> list[tuple[DocumentResult, api.CompressedModel | None]]:
    """Every document of a (multi-document) YAML or JSON text: its result, and the
    resource as API types when it is valid."""
    results: list[tuple[DocumentResult, api.CompressedModel | None]] = []
    number = 1  # the document being read, also when reading it fails
    try:
        for obj in spec_io.documents(text):
            if obj is not None:  # None: an empty document, e.g. after a trailing ---
                model, problems = parse_object(obj)
                results.append((DocumentResult(source, number, _name_of(obj), problems), model))
            number += 1
    except spec_io.SpecError as exc:
        results.append((DocumentResult(source, number, "", [exc.problem]), None))
    if not results:
        empty = Problem("", "no CompressedModel found", "the file holds no YAML documents")
        results.append((DocumentResult(source, 1, "", [empty]), None))
    for result, _ in results:
        result.problems = [
            Problem(p.path, p.message, p.fix, source, result.document, result.name) for p in result.problems
        ]
    return results


def check_documents(text: str, source: str) -> list[Problem]:
    """Every problem in every document of ``text``; [] when all are valid CompressedModels."""
    return [p for result in check_text(text, source) for p in result.problems]


def read_source(path: str) -> tuple[str, Problem | None]:
    """(text, problem) of a file argument; ``-`` is stdin. The problem: unreadable, not
    UTF-8 or over :data:`modelpress.spec_io.MAX_BYTES`."""
    try:
        return spec_io.read_text(path), None
    except spec_io.SpecError as exc:
        return "", exc.problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``modelpress validate``."""
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="YAML/JSON files (multi-document allowed); - for stdin"
    )
    add_output_argument(parser)


def validate_command(args: argparse.Namespace) -> int:
    results: list[DocumentResult] = []
    for path in args.files:
        source = "<stdin>" if path == "-" else path
        text, problem = read_source(path)
        if problem:
            results.append(
                DocumentResult(source, 1, "", [Problem(problem.path, problem.message, problem.fix, source, 1)])
            )
        else:
            results.extend(check_text(text, source))
    if args.output != "text":
        print(dump([r.as_dict() for r in results], args.output), end="")
    else:
        multi = {r.source for r in results if r.document > 1}
        for r in results:
            if r.valid:
                where = r.source + (f":doc {r.document}" if r.source in multi else "")
                print(f"{where}: {r.name} valid")
            for problem in r.problems:
                print(problem.line(show_document=r.source in multi))
    return 0 if all(r.valid for r in results) else 1
