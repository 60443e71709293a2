"""The ``maxConcurrentJobs`` book-keeping: which compression Jobs hold a slot, and which models wait for one.

Counted from the indexes, both cost O(N) per finished Job (every Job scanned for the
running ones, every model for the queued ones), which a thousand models under a cap pay
a thousand times. :class:`JobSlots` keeps them instead, updated per event: a Job's event
recounts that one Job (O(1)), a model's event moves that one model in or out of the queue
(O(log N)). It lives in memory only: :meth:`JobSlots.rebuild` makes it from the indexes on
first use, so a restarted operator starts from what the cluster says.

Pure: no API calls and no kopf, so a test can check it against a recount after any
sequence of events.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelpress import api
from modelpress.operator.phases import JobState

Key = tuple[str, str]  # (namespace, name)


def holds_slot(job: JobState | None, created_suspended: bool | None) -> bool:
    """Whether a compression Job takes one of the ``maxConcurrentJobs`` slots.

    ``job`` is what the index says of it (None: not there yet, or deleted);
    ``created_suspended`` whether this process created it suspended (None: it did not
    create it, or its outcome is collected). A finished Job frees its slot. A suspended one
    holds none: Kueue holds it (no pod, no quota), and counting it would let Jobs waiting
    for Kueue keep the cap full, so nothing Kueue could admit would ever be created. A Job
    this process just created counts as it was created until its first event reaches the index.
    """
    if job is not None:
        return not (job.finished or job.suspended)
    return created_suspended is False


def waits_for_slot(body: Mapping[str, Any]) -> bool:
    """Queued by the operator's own cap: Queued with no Job yet (one queued by Kueue has its Job),
    and not being deleted (it would be given a Job only for garbage collection to take it)."""
    status = body.get("status") or {}
    return (
        status.get("phase") == api.Phase.Queued.value
        and not status.get("jobName")
        and not body["metadata"].get("deletionTimestamp")
    )


def _line_position(body: Mapping[str, Any]) -> str:
    """Its place in the queue: the longest-waiting model first (creation time, then key, see :meth:`JobSlots.oldest`)."""
    return str(body["metadata"].get("creationTimestamp") or "")


@dataclass
class JobSlots:
    """Running compression Jobs and the models queued for a slot, kept per event (see the module docstring)."""

    # Jobs created by this process whose outcome is not collected yet: whether each was
    # created suspended (for Kueue).
    started: dict[Key, bool] = field(default_factory=dict)
    # Jobs that hold a slot (:func:`holds_slot`), so the cap check is len() of a set.
    running: set[Key] = field(default_factory=set)
    built: bool = False  # rebuilt from the indexes yet (on first use after start)
    # Models queued by the cap -> their place in line. A heap of (place, key) orders them;
    # entries go stale instead of being removed (a heap has no cheap removal), and
    # ``_heaped`` says which entry of a key is its live one, so a stale one is skipped when
    # it surfaces. Hand-written on heapq (stdlib) because the sorted containers on PyPI
    # are not a dependency of the operator.
    _queued: dict[Key, str] = field(default_factory=dict)
    _heap: list[tuple[str, Key]] = field(default_factory=list)
    _heaped: dict[Key, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ jobs

    def job_seen(self, key: Key, job: JobState | None) -> None:
        """The index's view of one Job changed (any event, DELETED too: then ``job`` is None)."""
        self._recount(key, job)

    def start(self, key: Key, suspended: bool, job: JobState | None) -> None:
        """This process is about to create the Job ``key``; ``job`` is the index's view of that name."""
        self.started[key] = suspended
        self._recount(key, job)

    def forget(self, key: Key, job: JobState | None) -> None:
        """The Job ``key`` is no longer this process's to count as created: collected, refused, failed or deleted."""
        self.started.pop(key, None)
        self._recount(key, job)

    def _recount(self, key: Key, job: JobState | None) -> None:
        if holds_slot(job, self.started.get(key)):
            self.running.add(key)
        else:
            self.running.discard(key)

    def full(self, cap: int) -> bool:
        """``cap`` Jobs (0: no cap) hold every slot."""
        return cap > 0 and len(self.running) >= cap

    def over_cap(self, cap: int, key: Key) -> bool:
        """Every slot is held, not by the Job ``key``: it must wait for one."""
        return key not in self.running and self.full(cap)

    # ------------------------------------------------------------------ models

    def model_seen(self, key: Key, body: Mapping[str, Any] | None) -> None:
        """A model's event (None: deleted): in line while its status says it waits for a slot, else out."""
        if body is None or not waits_for_slot(body):
            self._queued.pop(key, None)
            return
        place = _line_position(body)
        self._queued[key] = place
        if self._heaped.get(key) != place:
            self._push(place, key)

    def queued(self) -> list[Key]:
        """Every model in line, the longest-waiting first (O(N log N): for tests and debugging)."""
        return [key for _, key in sorted((place, key) for key, place in self._queued.items())]

    def take_oldest(self, taken: set[Key]) -> Key | None:
        """The longest-waiting queued model not in ``taken``, taken out of line (and added to ``taken``).

        The caller hands ``taken`` back through :meth:`requeue` when done: those still
        queued then take their place in line again. Meanwhile events may move models in or
        out of line: one taken out is still removed by its event.
        """
        while self._heap:
            place, key = heapq.heappop(self._heap)
            if self._heaped.get(key) != place:
                continue  # a stale entry: the key has a newer one
            del self._heaped[key]
            if self._queued.get(key) == place and key not in taken:
                taken.add(key)
                return key
        return None

    def requeue(self, keys: Iterable[Key]) -> None:
        """Hand back what :meth:`take_oldest` took: those still queued go back in line, in their place."""
        for key in keys:
            place = self._queued.get(key)
            if place is not None and self._heaped.get(key) != place:
                self._push(place, key)

    def _push(self, place: str, key: Key) -> None:
        self._heaped[key] = place
        heapq.heappush(self._heap, (place, key))
        if len(self._heap) > 2 * len(self._heaped) + 64:
            # Mostly stale entries: rebuilt from the live ones (O(N), amortized O(1) per push).
            self._heap = [(p, k) for k, p in self._heaped.items()]
            heapq.heapify(self._heap)

    # ------------------------------------------------------------------ restart

    def rebuild(
        self, jobs: Iterable[tuple[Key, JobState | None]], models: Iterable[tuple[Key, Mapping[str, Any]]]
    ) -> None:
        """Everything recounted from the indexes (what every Job and model is now): once, on first use."""
        self.running.clear()
        self._queued.clear()
        self._heap.clear()
        self._heaped.clear()
        seen = set()
        for key, job in jobs:
            seen.add(key)
            self._recount(key, job)
        for key in self.started.keys() - seen:
            self._recount(key, None)
        for key, body in models:
            self.model_seen(key, body)
        self.built = True
