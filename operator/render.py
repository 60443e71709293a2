"""``modelpress render SPEC.yaml``: print what the operator would create, from the same builders."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from modelpress import api, validate
from modelpress.operator import inference_service, job_builder
from modelpress.operator import settings as settings_mod
from modelpress.operator.validation import SpecInvalid
from modelpress.problems import Problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="A CompressedModel YAML/JSON file; - for stdin.")
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    parser.add_argument("-n", "--namespace", default=None, help="Namespace when metadata.namespace is absent.")
    parser.add_argument("--job-image", default=None, help="Default compression image (else the operator default).")


def load_model(path: str, namespace: str | None = None) -> api.CompressedModel:
    """Read and check one CompressedModel the way ``modelpress validate`` does; its
    problems (file, name, field path, fix) come back as :class:`SpecInvalid`."""
    source = "<stdin>" if path == "-" else path
    text, problem = validate.read_source(path)
    if problem:
        raise SpecInvalid([Problem(problem.path, problem.message, problem.fix, source)])
    documents = validate.load_text(text, source)
    if len(documents) != 1:
        raise SpecInvalid(
            [Problem("", f"holds {len(documents)} documents", f"render one {api.KIND} at a time", source)]
        )
    result, model = documents[0]
    if model is None:
        raise SpecInvalid(result.problems)
    if namespace and not model.metadata.namespace:
        model.metadata.namespace = namespace
    return model


def render_objects(model: api.CompressedModel, settings: settings_mod.Settings) -> list[dict[str, Any]]:
    """Every object the operator creates for this model, in apply order."""
    isvc = inference_service.render_inference_service(model, settings)
    return job_builder.build_compression(model, settings) + ([isvc] if isvc else [])


def render_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.load(flags={"job_image": args.job_image} if args.job_image else {})
    except settings_mod.SettingsError as exc:
        print(f"modelpress render: {exc}", file=sys.stderr)
        return 1
    try:
        model = load_model(args.spec, args.namespace)
    except SpecInvalid as exc:
        for problem in exc.problems:
            print(problem.line(), file=sys.stderr)
        return 1
    try:
        objects = render_objects(model, settings)
    except inference_service.ServingConfigError as exc:  # e.g. a KEDA metric with no Prometheus anywhere
        print(f"modelpress render: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    return 0
