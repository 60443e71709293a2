"""Resource limits for the compress step of local runs (``modelpress run``).

In the Job's pod the compress container has a memory limit (cgroup) and the Job a
deadline; on a laptop the same hostile model or dataset could exhaust the user's
machine instead. ``modelpress run`` therefore compresses in a child process that sets
``RLIMIT_AS`` (address space) and ``RLIMIT_CPU`` (CPU seconds) on itself before it
imports anything heavy, and the parent turns hitting a limit into one line naming it.

Address space, not resident memory: it is what a process can limit on itself without
cgroups. torch and onnxruntime reserve virtual ranges beyond what they touch (a digits
search with torch export, pruning and static quantization peaked at 1.5 GiB of address
space, measured with psutil), so the 16 GiB default leaves room for real models; CUDA reserves tens of GiB of address space when it starts,
so GPU runs need ``--max-memory 0`` (no limit).
"""

from __future__ import annotations

import re
import resource
from dataclasses import dataclass

DEFAULT_MAX_MEMORY = "16GiB"
DEFAULT_MAX_CPU_SECONDS = 0  # no limit: a search may legitimately take hours on a laptop
_SIZE = re.compile(r"(?i)^\s*([0-9]+(?:\.[0-9]+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*$")
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
# How allocation failures read once they surface: Python's MemoryError, torch's CPU
# allocator, onnxruntime's arena and C++'s std::bad_alloc, the loader mapping a library.
_OOM_TEXT = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "bad allocation", "failed to allocate")


@dataclass(frozen=True)
class Limits:
    """What the compress child may use; 0 means no limit."""

    max_memory: int = 0  # bytes of address space
    max_cpu_seconds: int = 0

    def apply(self) -> None:
        """Set the limits on this process (the child, before it imports torch)."""
        if self.max_memory:
            resource.setrlimit(resource.RLIMIT_AS, (self.max_memory, self.max_memory))
        if self.max_cpu_seconds:
            # SIGXCPU at the soft limit (fatal: Python does not handle it), SIGKILL a little later.
            resource.setrlimit(resource.RLIMIT_CPU, (self.max_cpu_seconds, self.max_cpu_seconds + 5))

    def memory_message(self) -> str:
        return f"the compression step exceeded its memory limit of {format_size(self.max_memory)} (--max-memory)"

    def cpu_message(self) -> str:
        return f"the compression step exceeded its CPU time limit of {self.max_cpu_seconds} seconds (--max-cpu-seconds)"


def parse_size(text: str) -> int:
    """``8GiB``, ``512M``, ``1.5g``, ``0`` -> bytes (binary units: the flag bounds memory)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 8GiB, 512MiB or 0 (no limit)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "")[:1].lower()])


def format_size(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e``, or an exception it was raised from, is an allocation failure."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, MemoryError) or any(t in str(cur).lower() for t in _OOM_TEXT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
