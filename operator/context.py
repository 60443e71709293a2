"""What one operator process holds between events, handed to every handler through kopf's memo.

kopf passes ``memo`` to every handler: the operator-wide memo to startup, login and
cleanup, and to each resource's handlers a shallow copy of it made when the resource is
first seen (after startup), so all of them share the one :class:`Context` kept under
:data:`MEMO_KEY`. Passed in rather than a module global, so settings, the API client and
the book-keeping of one ``kopf run`` never leak into the next one in the same process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import kopf

from modelpress.operator import settings as settings_mod
from modelpress.operator.job_slots import JobSlots
from modelpress.operator.kube import Kube

MEMO_KEY = "modelpress"


@dataclass
class Context:
    """Settings, the API client and what this process remembers (rebuilt on restart)."""

    settings: settings_mod.Settings
    client: Kube | None = None
    # Jobs created by this process and those holding a maxConcurrentJobs slot, models waiting for one.
    slots: JobSlots = field(default_factory=JobSlots)
    # uids of Jobs whose outcome is in status; a Job's uid goes with its DELETED event.
    collected: set[str] = field(default_factory=set)
    cap_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    metrics_server: Any = None
    pod_check: asyncio.Task[None] | None = None
    rollout_loop: asyncio.Task[None] | None = None
    # uid -> the generation whose InferenceService a settled model was last checked
    # against; in memory only, so after a restart each settled model is checked once.
    # A model's uid goes with its DELETED event.
    rollout_checked: dict[str, int | None] = field(default_factory=dict)

    def kube(self) -> Kube:
        """The API client; a temporary error (kopf retries) until kopf has logged in."""
        if self.client is None:
            raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
        return self.client


def memo_for(settings: settings_mod.Settings) -> kopf.Memo:
    """The operator-wide memo for ``kopf.run(memo=...)`` with these settings."""
    return kopf.Memo({MEMO_KEY: Context(settings=settings)})


def ensure(memo: kopf.Memo) -> Context:
    """The context in the operator-wide memo, made from the ``MODELPRESS_*`` environment
    when nobody passed one in (``kopf run -m modelpress.operator.handlers``).

    Only for startup and login handlers, which get the operator-wide memo: one made in a
    resource's copy would be that resource's alone.
    """
    if MEMO_KEY not in memo:
        memo[MEMO_KEY] = Context(settings=settings_mod.from_env())
    return memo[MEMO_KEY]


def of(memo: kopf.Memo) -> Context:
    """The context in a resource handler's memo (startup put it there)."""
    return memo[MEMO_KEY]
