"""The DVC pipeline as the flows see it: stages read from dvc.yaml, each run through DVC.

dvc.yaml is the only definition of the steps; a flow runs the stages its technique declares
(flows/registry.py, checked against dvc.yaml by a test) one by one with
`dvc repro --single-item`, so DVC skips what is up to date and dvc.lock records what ran, exactly
as with a plain `dvc repro`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task

from tasks.params import parse_yaml
from tasks.steps import read_error

# TensorFlow's start-up lines (absl INFO/WARNING, CPU instruction notes): kept at debug level.
_FRAMEWORK_NOISE = re.compile(
    r"^([IW]\d{4} \d\d:\d\d:\d\d|E\d{4} .*(cuInit|remapper failed)|WARNING: All log messages before absl"
    r"|To enable the following instructions)"
)


class StageFailed(RuntimeError):
    """A DVC stage exited with an error; the message carries the stage's own error line.

    `retryable` is set when the step said trying again may help (a network failure); bad
    input (params, corpus, seed text) is not retried.
    """

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def retry_if_retryable(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only failures the stage marked as retryable."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, StageFailed) or error.retryable


def stage_retries(root: Path, name: str) -> int:
    """Prefect retries of a stage: its `meta.retries` in dvc.yaml (DVC itself ignores meta)."""
    stages = (parse_yaml((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    if name not in stages:
        raise KeyError(f"dvc.yaml has no stage {name!r}")
    return int((stages[name].get("meta") or {}).get("retries", 0))


def stage_lock(root: Path, name: str) -> dict:
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return {}
    return (parse_yaml(lock_path.read_text()) or {}).get("stages", {}).get(name, {})


def subprocess_env() -> dict[str, str]:
    """The environment for stage commands: `python` must be this interpreter (the venv's)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    return env


@task(name="dvc-stage", retry_condition_fn=retry_if_retryable)
def run_stage(name: str, root: Path) -> bool:
    """Run one DVC stage, streaming its output into the flow's log; True if it ran.

    On failure the stage's previous outputs are checked out again from the DVC cache (DVC
    deletes them before running the command), so a bad input loses nothing.
    """
    logger = get_run_logger()
    before = stage_lock(root, name)
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--quiet", "--single-item", name],
        cwd=root,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines = []
    for line in process.stdout:
        line = line.rstrip()
        if line:
            logger.log(logging.DEBUG if _FRAMEWORK_NOISE.match(line) else logging.INFO, "%s | %s", name, line)
            lines.append(line)
    if process.wait() != 0:
        if before:
            subprocess.run(
                [sys.executable, "-m", "dvc", "checkout", "--force", name],
                cwd=root,
                env=subprocess_env(),
                capture_output=True,
                check=False,
            )
        # No reported error means the step crashed: show its last lines, and let it retry.
        reason, retryable = read_error(lines) or ("\n".join(lines[-5:]), True)
        raise StageFailed(f"stage {name} failed: {reason}", retryable=retryable)
    ran = stage_lock(root, name) != before
    logger.info("%s: %s", name, "ran, dvc.lock updated" if ran else "up to date, skipped by DVC")
    return ran
