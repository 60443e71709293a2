"""Turn a CompressedModel body into API types, or a list of problems with field paths.

The CRD schema (and its CEL rules) already reject most bad input at ``kubectl apply``
time; this is the operator's second line for what reaches it anyway (older CRD, CEL
disabled, ``kubectl replace --validate=false``). The checks are those of
``modelpress validate`` (:func:`modelpress.validate.parse_object`), so the SpecValid
condition and its Event carry the same field path, value and fix a user gets locally.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelpress import api
from modelpress.problems import Problem
from modelpress.validate import parse_object


class SpecInvalid(ValueError):
    """The resource cannot be compressed as written; ``problems`` name each field."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(format_problems(problems))


def format_problems(problems: list[Problem]) -> str:
    """One line for a condition or an Event: ``PATH: WHAT; FIX`` per problem."""
    return " | ".join(p.text() for p in problems)


def parse_model(body: Mapping[str, Any]) -> api.CompressedModel:
    """The resource as API types, or :class:`SpecInvalid` listing every problem.

    ``body`` is what the API server or the handlers' index holds: apiVersion and kind are
    those of the watch (the index keeps neither) and status is the operator's own, so
    only metadata and spec are checked. Kubernetes accepts names a Job cannot carry
    (dots, more than 54 characters: the Job is ``<name>-<hash8>``); they are problems too.
    """
    resource = {k: body[k] for k in ("metadata", "spec") if k in body}
    model, problems = parse_object({"apiVersion": api.API_VERSION, "kind": api.KIND, **resource})
    if model is None:
        raise SpecInvalid(problems)
    return model
