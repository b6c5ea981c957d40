"""How a step's command line tells the flow that ran it through DVC why it failed: one line on
stderr, "error: ..." for bad input (not worth retrying), "retryable error: ..." when trying
again may help (a network failure). DVC passes the line through; the flow reads it back."""

from __future__ import annotations

import sys
from collections.abc import Sequence

ERROR = "error: "
RETRYABLE_ERROR = "retryable error: "


def report_error(error: Exception) -> int:
    """Print the one line for `error` (retryable if it says so) and return the exit code."""
    prefix = RETRYABLE_ERROR if getattr(error, "retryable", False) else ERROR
    print(f"{prefix}{error}", file=sys.stderr, flush=True)
    return 2


def read_error(output: Sequence[str]) -> tuple[str, bool] | None:
    """The last reported error in a step's output, and whether it is retryable."""
    for line in reversed(output):
        for prefix in (RETRYABLE_ERROR, ERROR):
            if line.startswith(prefix):
                return line.removeprefix(prefix), prefix == RETRYABLE_ERROR
    return None
