"""``python -m modelpress.jobs``: the compression Job (same as ``modelpress job``)."""

import argparse
import sys

from modelpress.jobs.entrypoint import add_arguments, job_command


def main(argv: list[str] | None = None) -> int:
    from modelpress.cli import COMMANDS, exit_code_epilog

    parser = argparse.ArgumentParser(
        prog="python -m modelpress.jobs",
        description=__doc__,
        epilog=exit_code_epilog(COMMANDS["job"].exit_codes()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return job_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
