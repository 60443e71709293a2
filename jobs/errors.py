"""The one error type the job shows to users.

Anything the user can fix (a bad URI, a corrupt model, a dataset that does not fit
the model) is raised as :class:`JobInputError` naming the spec field and the fix; the
entrypoint turns it into the summary's ``reason`` without a traceback. Every other
exception is a bug or an environment problem and is logged with its traceback.
"""

from __future__ import annotations

from modelpress.summary import shorten


class JobInputError(Exception):
    """A problem with the job's input, phrased as ``<field>: <what is wrong>``."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class StepInputError(Exception):
    """A compression step cannot work on the model it is given (e.g. a tree method on a
    neural network): the user's recipe is at fault, not the method. The pipeline's runner,
    which knows the step's place, raises it as :class:`JobInputError` on
    ``compression.steps[i].<key>``."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type when the message is empty):
    what a one-line reason for users or the report shows."""
    lines = str(e).strip().splitlines()
    return shorten(lines[0] if lines else type(e).__name__, limit)
