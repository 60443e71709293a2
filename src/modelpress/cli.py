"""``modelpress`` command line, in the manner of kubectl/helm.

Each subcommand imports its implementation only when it runs, so the torch-free
commands (``validate``, ``crd``, ``render``, ``operator``) never load the ML stack.

Conventions shared by every command: ``-o json|yaml`` wherever objects are printed
(:mod:`modelpress.output`), ``modelpress --version``, and the exit codes below, which
``--help`` lists (the epilog) for the whole CLI and for each command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelpress.output import add_output_argument, dump

# Every command: argparse's usage error and an interrupted run (128 + SIGINT).
COMMON_EXIT_CODES: dict[int, str] = {2: "usage error (unknown command, flag or value)", 130: "interrupted (Ctrl-C)"}


def _job_exit_codes() -> dict[int, str]:
    """The Job's documented codes (:class:`modelpress.summary.ExitCode`), shared by ``run`` and ``job``."""
    from modelpress.summary import ExitCode

    meaning = {
        ExitCode.VALIDATED: "Validated: every threshold met; artifact written",
        ExitCode.FAILED: "Failed: bad input or an error; nothing usable produced",
        ExitCode.REJECTED: "Rejected: compressed, but a threshold was broken",
    }
    return {int(code): meaning[code] for code in ExitCode}


@dataclass(frozen=True)
class Command:
    """A subcommand: ``target`` is "module:function" (args -> exit code); the module's
    ``add_arguments(parser)`` declares its flags."""

    target: str
    help: str
    exit_codes: Callable[[], dict[int, str]]


COMMANDS: dict[str, Command] = {
    "version": Command("modelpress.cli:version_command", "Print the ModelPress version.", lambda: {0: "printed"}),
    "crd": Command(
        "modelpress.crd:crd_command",
        "Print the CompressedModel CRD generated from the API types.",
        lambda: {0: "printed"},
    ),
    "validate": Command(
        "modelpress.validate:validate_command",
        "Check CompressedModel files; list every problem.",
        lambda: {0: "every document is valid", 1: "a document has problems, or a file cannot be read"},
    ),
    "render": Command(
        "modelpress.operator.render:render_command",
        "Print the objects the operator would create.",
        lambda: {0: "printed", 1: "the spec (or an operator setting) has problems; nothing printed"},
    ),
    "run": Command(
        "modelpress.jobs.local:run_command",
        "Compress locally (no cluster): the same job, file:// storage.",
        _job_exit_codes,
    ),
    "job": Command(
        "modelpress.jobs.entrypoint:job_command", "Entry point of the compression Job container.", _job_exit_codes
    ),
    "predict": Command(
        "modelpress.jobs.scoring:predict_command",
        "Score a table (parquet, csv, npz) with an artifact, as the online runtime would; write parquet.",
        lambda: {0: "predictions written", 1: "bad input (artifact, data or a flag); nothing written"},
    ),
    "operator": Command(
        "modelpress.operator.main:operator_command",
        "Run the Kubernetes operator.",
        lambda: {0: "stopped cleanly", 2: "usage error, or an operator setting (flag or environment) is invalid"},
    ),
}


Run = Callable[[argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]


def _resolve(target: str) -> tuple[Run, AddArguments]:
    """The command's function and its module's ``add_arguments``."""
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    run: Run = getattr(module, func_name)
    add_arguments: AddArguments = module.add_arguments
    return run, add_arguments


def version_text() -> str:
    from modelpress import __version__
    from modelpress.api import API_VERSION

    return f"modelpress {__version__} (API {API_VERSION})"


def version_command(args: argparse.Namespace) -> int:
    from modelpress import __version__
    from modelpress.api import API_VERSION

    if args.output == "text":
        print(version_text())
    else:
        print(dump({"version": __version__, "apiVersion": API_VERSION}, args.output), end="")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``modelpress version``."""
    add_output_argument(parser)


def exit_code_epilog(codes: dict[int, str]) -> str:
    """The "exit codes" section of a ``--help``: the command's own, then the common ones."""
    rows = {**COMMON_EXIT_CODES, **codes}
    return "exit codes:\n" + "\n".join(f"  {code:<4}{meaning}" for code, meaning in sorted(rows.items()))


# The summary in ``modelpress --help``; a test checks it covers every command's codes.
OVERALL_EXIT_CODES: dict[int, str] = {
    0: "success (run, job: Validated; predict: written)",
    1: "the input has problems (validate, render, predict), or the job Failed (run, job)",
    2: COMMON_EXIT_CODES[2],
    3: "Rejected: compressed, but a threshold was broken (run, job)",
    130: COMMON_EXIT_CODES[130],
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpress",
        description="Compress ML models and ship them safely on Kubernetes.",
        epilog=exit_code_epilog(OVERALL_EXIT_CODES)
        + "\n\n`modelpress COMMAND --help` says what each code means there.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text(), help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, command in COMMANDS.items():
        sp = sub.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=exit_code_epilog(command.exit_codes()),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # Only the chosen subcommand's module is imported (to declare its flags).
        if name == wanted:
            func, add_flags = _resolve(command.target)
            add_flags(sp)
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
