"""``modelpress`` command line, in the manner of kubectl/helm.

Each subcommand imports its implementation only when it runs, so the torch-free
commands (``validate``, ``crd``, ``render``, ``operator``) never load the ML stack.

Exit codes: 0 success; 1 the input has problems (validation errors, a failed job);
2 usage error (argparse); ``modelpress job``/``run`` use the job codes documented in
:class:`modelpress.summary.ExitCode`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> ("module:function", help). The function takes the parsed args and
# returns an exit code; `add_arguments(parser)` in the same module declares its flags.
COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("modelpress.cli:version_command", "Print the ModelPress version."),
    "crd": ("modelpress.crd:crd_command", "Print the CompressedModel CRD generated from the API types."),
    "validate": ("modelpress.validate:validate_command", "Check CompressedModel files; list every problem."),
    "render": ("modelpress.operator.render:render_command", "Print the objects the operator would create."),
    "run": ("modelpress.jobs.local:run_command", "Compress locally (no cluster): the same job, file:// storage."),
    "job": ("modelpress.jobs.entrypoint:job_command", "Entry point of the compression Job container."),
    "operator": ("modelpress.operator.main:operator_command", "Run the Kubernetes operator."),
}


def _resolve(target: str) -> tuple[Callable[[argparse.Namespace], int], object]:
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name), module


def version_command(args: argparse.Namespace) -> int:
    from modelpress import __version__
    from modelpress.api import API_VERSION

    if args.output == "json":
        import json

        print(json.dumps({"version": __version__, "apiVersion": API_VERSION}))
    else:
        print(f"modelpress {__version__} (API {API_VERSION})")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``modelpress version``."""
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpress",
        description="Compress ML models and ship them safely on Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (target, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported (to declare its flags).
        if name == wanted:
            func, module = _resolve(target)
            module.add_arguments(sp)  # type: ignore[attr-defined]
            sp.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
