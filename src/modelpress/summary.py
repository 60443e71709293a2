"""The Job -> operator contract: a small versioned JSON summary and the exit codes.

The compression Job writes this to its termination-message path, so the operator
learns the outcome from the Pod status and the Job needs no API credentials. The
kubelet keeps at most 4 KiB of a termination message; ``to_termination_message``
guarantees the limit by dropping detail (never the outcome) when needed.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any

from pydantic import Field

from modelpress.api import Artifact, Results, Spec

SUMMARY_VERSION = 1
TERMINATION_MESSAGE_LIMIT = 4096
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class ExitCode(int, Enum):
    """Documented exit codes of ``python -m modelpress.jobs`` / ``modelpress job``."""

    VALIDATED = 0  # the compressed model met every threshold; artifact written
    FAILED = 1  # bad input or an error: nothing usable was produced
    REJECTED = 3  # compression ran, but a threshold was broken (see failedThresholds)


# Exit codes that mean "same input, same outcome" (bad input, a broken threshold): the
# Job's podFailurePolicy fails the Job at once instead of retrying them on GPU time.
DETERMINISTIC_EXIT_CODES = (ExitCode.FAILED, ExitCode.REJECTED)


class Outcome(str, Enum):
    validated = "Validated"
    rejected = "Rejected"
    failed = "Failed"


class JobSummary(Spec):
    version: int = SUMMARY_VERSION
    outcome: Outcome
    reason: str = Field(default="", description="Human-readable; why it failed or was rejected.")
    recipe_hash: str | None = None
    artifact: Artifact | None = None
    results: Results | None = None

    @property
    def exit_code(self) -> ExitCode:
        return {
            Outcome.validated.value: ExitCode.VALIDATED,
            Outcome.rejected.value: ExitCode.REJECTED,
            Outcome.failed.value: ExitCode.FAILED,
        }[self.outcome]

    def to_termination_message(self) -> str:
        """Compact, strict JSON that always fits the kubelet's 4 KiB limit."""
        data = finite(self.model_dump(by_alias=True, mode="json", exclude_none=True))
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        # Drop the bulky parts first; the full report lives next to the artifact.
        results = data.get("results", {})
        for key in ("chosenRecipe", "hardware", "failedThresholds"):
            results.pop(key, None)
            text = json.dumps(data, separators=(",", ":"), allow_nan=False)
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                return text
        data["reason"] = shorten(data.get("reason", ""), 1024)
        return json.dumps(data, separators=(",", ":"), allow_nan=False)[:TERMINATION_MESSAGE_LIMIT]


def finite(value: Any) -> Any:
    """``value`` (JSON-like) with NaN and infinities replaced by None.

    Python's json writes them as the bare words NaN/Infinity, which strict JSON readers
    (Go's, the operator's clients, jq) refuse. The job never measures them on purpose (a
    model producing NaN fails its trial); this keeps the documents parseable regardless.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, marked with an
    ellipsis, so a reason never ends mid-word as if that were the whole message."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    space = cut.rfind(" ")
    if space > limit // 2:  # a word boundary that keeps most of the text
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"
