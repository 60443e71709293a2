"""``modelpress operator``: run the kopf operator with the handlers in this package."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from modelpress.operator import settings as settings_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")


# Container allocations between young-generation collections (Python's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector's cost per event flat as models grow.

    kopf leaves reference cycles behind on every event (each body and patch wrapper points
    back at its parent), and they outlive the young generations because a handler awaits
    the API meanwhile, so only full collections free them. Those walk every tracked
    object, the in-memory index of every model included, and with the default thresholds
    ran about every hundred thousand allocations: the more models, the longer each walk,
    as often as ever (a fifth of the operator's CPU at 4,000 models). Freezing what the
    imports made takes it out of every walk, and a larger young generation makes the
    older collections, and so the full ones, a thirtieth as frequent; Python still runs a
    full one only once a quarter of the heap is new, which bounds the garbage held meanwhile.
    Only here, in the operator's own process (not in tests that run kopf in theirs).
    """
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


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
    tune_gc()
    kopf.run(
        standalone=settings.standalone,
        peering_name=None if settings.standalone else settings.peering_name,
        clusterwide=settings.cluster_wide,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None,
        memo=memo,
    )
    return 0
