"""User-facing errors.

Anything a user can cause (bad path, unknown encoder, corrupt index...) raises
:class:`RelsearchError` with a one-line message; the CLI prints it and exits 2.
Programming errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class RelsearchError(Exception):
    """An error caused by user input or environment, reported as one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line, always: the CLI contract is "one-line message, exit 2".
        super().__init__(" ".join(str(message).split()))


class IndexMismatchError(RelsearchError):
    """The index on disk was built by another encoder or schema."""


class MissingWeightsError(RelsearchError):
    """Model weights are not available locally."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
