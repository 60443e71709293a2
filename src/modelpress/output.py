"""``-o json|yaml`` for every command that prints objects, as kubectl and helm do.

One flag spelling and one serialisation for all commands, so a script can switch
between them (``modelpress validate -o json``, ``modelpress run -o yaml``) without
learning each command's habits. Human output stays each command's own default.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

# The machine-readable formats every object-printing command accepts.
OBJECT_FORMATS = ("json", "yaml")


def add_output_argument(parser: argparse.ArgumentParser, human: str | None = "text") -> None:
    """``-o/--output``: ``human`` (the default, when the command has a human form), json or yaml."""
    choices = ([human] if human else []) + list(OBJECT_FORMATS)
    parser.add_argument(
        "-o",
        "--output",
        choices=choices,
        default=choices[0],
        help=f"output format (default {choices[0]})",
    )


def dump(obj: Any, output: str) -> str:
    """``obj`` (plain JSON data) as ``output`` (json or yaml), ending in a newline."""
    if output == "json":
        return json.dumps(obj, indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    raise ValueError(f"not an object format: {output!r}")
