"""``modelpress operator``: run the kopf operator with the handlers in this package."""

from __future__ import annotations

import argparse
import logging
import sys

from modelpress.operator import settings as settings_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")


def operator_command(args: argparse.Namespace) -> int:
    try:  # first: a bad setting is a usage error, reported before anything starts
        settings = settings_mod.from_args(args)
    except settings_mod.SettingsError as exc:
        print(f"modelpress operator: {exc}", file=sys.stderr)
        return 2
    import kopf

    import modelpress.operator.rollout_handlers  # noqa: F401  (registers the rollout timer)
    from modelpress.operator import handlers  # registers the handlers with kopf

    memo = handlers.configure(settings)  # passed to every handler by kopf
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs "Handler ... succeeded" for every watch event: noise at a thousand models.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=settings.standalone,
        peering_name=None if settings.standalone else settings.peering_name,
        clusterwide=settings.cluster_wide,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None,
        memo=memo,
    )
    return 0
