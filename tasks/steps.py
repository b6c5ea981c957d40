"""The command line of every DVC step, and how it tells the flow that ran it through DVC why it
failed: one line on stderr, "error: ..." for bad input (not worth retrying), "retryable error: ..."
when trying again may help (a network failure). DVC passes the line through; the flow reads it back.

A technique's step module ends with

    if __name__ == "__main__":
        sys.exit(run_steps({"train": train, "sample": sample}, __doc__))

and dvc.yaml runs `python -m tasks.<technique>.<module> <step>` from the repo root.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ERROR = "error: "
RETRYABLE_ERROR = "retryable error: "


class StepError(Exception):
    """Bad input a step reports as one line instead of a traceback; `retryable` if trying again
    may help. Every input error of gendl (params, data, images, downloads) derives from it."""

    retryable = False


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


def seconds_since_process_start() -> float | None:
    """Seconds since the kernel started this process (/proc/self/stat starttime, 10 ms ticks): the
    interpreter's start and every import before now. None where /proc is missing (not Linux)."""
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def run_steps(
    steps: Mapping[str, Callable[[Path], object]], description: str | None, argv: Sequence[str] | None = None
) -> int:
    """Parse `<step> [--root DIR]`, run `steps[step](root)` and turn a StepError into its one line.
    A step that succeeds logs its own seconds and those of its process before it (start-up, imports)."""
    parser = argparse.ArgumentParser(description=(description or "").strip().split("\n", 1)[0])
    parser.add_argument("step", choices=list(steps))
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root holding params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    startup, started = seconds_since_process_start(), time.perf_counter()
    try:
        steps[args.step](args.root)
    except StepError as error:
        return report_error(error)
    logging.info(
        "step %s done: %.2f s in the step, %s s before it (process start, imports)",
        args.step,
        time.perf_counter() - started,
        "?" if startup is None else f"{startup:.2f}",
    )
    return 0
