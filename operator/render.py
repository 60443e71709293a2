"""``modelpress render SPEC.yaml``: print what the operator would create, from the same builders."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelpress import api
from modelpress.operator import inference_service, job_builder
from modelpress.operator import settings as settings_mod
from modelpress.operator.validation import SpecInvalid, field_path, parse_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="A CompressedModel YAML/JSON file.")
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    parser.add_argument("-n", "--namespace", default=None, help="Namespace when metadata.namespace is absent.")
    parser.add_argument("--job-image", default=None, help="Default compression image (else the operator default).")


def load_model(path: Path, namespace: str | None = None) -> api.CompressedModel:
    """Read and validate one CompressedModel; problems come back as :class:`SpecInvalid`."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecInvalid([("", f"cannot read {path}: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise SpecInvalid([("", f"{path} is not valid YAML: {exc}")]) from None
    if not isinstance(doc, dict) or doc.get("kind") != api.KIND:
        raise SpecInvalid([("", f"{path} must hold one {api.KIND} (apiVersion {api.API_VERSION})")])
    try:
        parse_spec(doc.get("spec"))  # one problem per field path of the spec
    except SpecInvalid as exc:
        raise SpecInvalid([(f"spec.{p}" if p else "spec", m) for p, m in exc.problems]) from None
    try:
        model = api.CompressedModel.model_validate(doc)
    except ValidationError as exc:
        raise SpecInvalid([(field_path(e["loc"]), e["msg"]) for e in exc.errors()]) from None
    if namespace and not model.metadata.namespace:
        model.metadata.namespace = namespace
    return model


def render_objects(model: api.CompressedModel, settings: settings_mod.Settings) -> list[dict[str, Any]]:
    """Every object the operator creates for this model, in apply order."""
    isvc = inference_service.render_inference_service(model, settings)
    return job_builder.build_compression(model, settings) + ([isvc] if isvc else [])


def render_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.from_env()
    except ValueError as exc:
        print(f"modelpress render: {exc}", file=sys.stderr)
        return 1
    if args.job_image:
        settings = dataclasses.replace(settings, job_image=args.job_image)
    try:
        model = load_model(args.spec, args.namespace)
    except SpecInvalid as exc:
        for path, msg in exc.problems:
            print(f"{args.spec}: {path or 'error'}: {msg}", file=sys.stderr)
        return 1
    objects = render_objects(model, settings)
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    return 0
