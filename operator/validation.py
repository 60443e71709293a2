"""Turn a CompressedModel body into API types, or a list of problems with field paths.

The CRD schema (and its CEL rules) already reject most bad input at ``kubectl apply``
time; this is the operator's second line for what reaches it anyway (older CRD, CEL
disabled, ``kubectl replace --validate=false``). Every problem names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from modelpress import api


class SpecInvalid(ValueError):
    """The spec cannot be compressed as written; ``problems`` are (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(format_problems(problems))


def format_problems(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"spec.{path}: {msg}" if path else f"spec: {msg}" for path, msg in problems)


def field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_spec(spec: Mapping[str, Any] | None) -> api.CompressedModelSpec:
    """Validated spec, or :class:`SpecInvalid` listing every problem."""
    if not isinstance(spec, Mapping):
        raise SpecInvalid([("", "spec is missing; see `modelpress crd` for the schema")])
    try:
        return api.CompressedModelSpec.model_validate(dict(spec))
    except ValidationError as exc:
        field_errors = [e for e in exc.errors() if e["loc"]]
        if field_errors:
            raise SpecInvalid([(field_path(e["loc"]), e["msg"]) for e in field_errors]) from None
        # Only the cross-field rules failed, so every part parses on its own; ask the
        # shared rule list again to get one problem per field path.
        parts = api.CompressedModelSpec.model_construct(
            source=api.Source.model_validate(spec["source"]),
            compression=api.Compression.model_validate(spec["compression"]),
            validation=api.Validation.model_validate(spec["validation"]),
        )
        raise SpecInvalid(api.semantic_problems(parts) or [("", str(exc))]) from None


def parse_model(body: Mapping[str, Any]) -> api.CompressedModel:
    """The whole resource as API types, or :class:`SpecInvalid` (metadata included).

    Kubernetes accepts names our Jobs cannot carry (dots, more than 54 characters):
    the Job is ``<name>-<hash8>`` and must be a 63-character DNS label.
    """
    spec = parse_spec(body.get("spec"))
    meta = dict(body.get("metadata") or {})
    try:
        api.ObjectMeta.model_validate(meta)
    except ValidationError as exc:
        raise SpecInvalid(
            [
                (
                    "",
                    f"metadata.{field_path(e['loc'])} {meta.get(e['loc'][0])!r}: {e['msg']}; use a DNS-1123 label of "
                    f"at most {api.MAX_NAME_LENGTH} characters so the Job name <name>-<hash8> fits 63",
                )
                for e in exc.errors()
            ]
        ) from None
    return api.CompressedModel.model_validate(
        {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": meta, "spec": spec}
    )
