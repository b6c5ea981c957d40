"""The DVC pipeline as the flows see it: stages read from dvc.yaml, each run through DVC.

dvc.yaml is the only definition of the steps; a flow runs the stages its technique declares
(flows/registry.py, checked against dvc.yaml by a test) one by one with
`dvc repro --single-item`, so DVC skips what is up to date and dvc.lock records what ran, exactly
as with a plain `dvc repro`.

With the team's DVC remote (a remote named `team`, the default, normally in .dvc/config.local as
the deployments' pull step or `dvc remote add -d --local team <url>` puts it) each stage runs with
`dvc repro --pull`: DVC first fetches the remote's run-cache, then a stage whose command, code,
params and input data match an entry there gets its outputs from the remote instead of running.
The flow then pushes its stages' outputs and the run-cache (`push_outputs`), so the next flow run
or a teammate's clone with the same remote reproduces them without running anything.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from dvc.repo import Repo
from prefect import get_run_logger, task

from tasks import storage
from tasks.params import parse_yaml
from tasks.steps import read_error

# TensorFlow's start-up lines (absl INFO/WARNING, CPU instruction notes): kept at debug level.
_FRAMEWORK_NOISE = re.compile(
    r"^([IW]\d{4} \d\d:\d\d:\d\d|E\d{4} .*(cuInit|remapper failed)|WARNING: All log messages before absl"
    r"|To enable the following instructions)"
)
# DVC's advice after a stage (git add dvc.lock, auto staging, dvc push): the flow does what applies.
_DVC_CHATTER = re.compile(
    r"^(To track the changes with git|\s*git add |To enable auto staging|\s*dvc config core.autostage"
    r"|Use `dvc push` to send|Generating lock file|Updating lock file)"
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


TEAM_REMOTE = "team"  # the shared DVC remote's name (scripts/team.sh, prefect.yaml's pull step)
# What DVC prints when it runs a stage's command, and when it restores its outputs from the run-cache.
_RUNNING_STAGE = "Running stage '{}':"
_RESTORED_STAGE = "Stage '{}' is cached - skipping run"


def team_remote(root: Path) -> str | None:
    """The URL of the team's DVC remote if the workspace at `root` has one (at any config level).

    It must be the default remote, since `dvc repro --pull` pulls from the default one.
    """
    with Repo(str(root)) as repo:  # DVC's own reading of .dvc/config, config.local and the user's
        remotes, default = repo.config["remote"], repo.config["core"].get("remote")
    if TEAM_REMOTE not in remotes:
        return None
    url = remotes[TEAM_REMOTE]["url"]
    if default != TEAM_REMOTE:
        raise ValueError(
            f"DVC remote {TEAM_REMOTE!r} ({url}) is not the default remote of {root}, so `dvc repro "
            f"--pull` would pull from another: run `dvc remote default --local {TEAM_REMOTE}` there"
        )
    return url


def dvc_command(*args: str) -> list[str]:
    """`python -m dvc <args>`, run by the flow's step server when there is one (tasks/run.py): DVC is
    imported there already, which saves its start (~0.3 s) per command."""
    return [sys.executable, "-m", "tasks.run", "dvc", *args]


def subprocess_env() -> dict[str, str]:
    """The environment for stage commands: `python` must be this interpreter (the venv's)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    return env


@task(name="dvc-stage", retry_condition_fn=retry_if_retryable)
def run_stage(name: str, root: Path, pull: bool = False) -> bool:
    """Run one DVC stage, streaming its output into the flow's log; True if its command ran.

    False when DVC skipped it (up to date) or restored its outputs from the run-cache (with
    `pull`, the team remote's: `dvc repro --pull`). On failure the stage's previous outputs are
    checked out again from the DVC cache (DVC deletes them before running the command), so a bad
    input loses nothing.
    """
    logger = get_run_logger()
    before = stage_lock(root, name)
    process = subprocess.Popen(
        dvc_command("repro", *(["--pull"] if pull else []), "--single-item", name),
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
            noise = _FRAMEWORK_NOISE.match(line) or _DVC_CHATTER.match(line)
            logger.log(logging.DEBUG if noise else logging.INFO, "%s | %s", name, line)
            lines.append(line)
    if process.wait() != 0:
        if before:
            subprocess.run(
                dvc_command("checkout", "--force", name),
                cwd=root,
                env=subprocess_env(),
                capture_output=True,
                check=False,
            )
        # No reported error means the step crashed: show its last lines, and let it retry.
        reason, retryable = read_error(lines) or ("\n".join(lines[-5:]), True)
        raise StageFailed(f"stage {name} failed: {reason}", retryable=retryable)
    ran = _RUNNING_STAGE.format(name) in lines
    if ran:
        outcome = "ran, dvc.lock updated"
    elif any(line.startswith(_RESTORED_STAGE.format(name)) for line in lines):
        outcome = "restored from the DVC run-cache" + (" (team remote)" if pull else "") + ", not run"
    else:
        outcome = "up to date, skipped by DVC"
    logger.info("%s: %s", name, outcome)
    return ran


def transfer(root: Path, *args: str) -> str:
    """Run `dvc <args>` (a pull or push) in `root`; its last line of output, or RuntimeError with all of it."""
    result = subprocess.run(
        dvc_command(*args), cwd=root, env=subprocess_env(), capture_output=True, text=True
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed: {output}")
    return output.splitlines()[-1] if output else ""


@task(name="dvc-pull-inputs", retries=3, retry_delay_seconds=10)
def pull_inputs(root: Path, technique: str, remote: str = TEAM_REMOTE) -> None:
    """Check out the `.dvc`-tracked folders under inputs/<technique>/ from remote `remote`
    (I/O: retried); nothing to do for a technique without such a folder.

    `dvc repro --pull --single-item` pulls what a stage restores, not the data sources its
    dependencies are made of, so a fresh workspace gets them here, before its stages.
    """
    folder = f"{storage.INPUTS}/{technique}"
    if (root / folder).is_dir():
        summary = transfer(root, "pull", "-R", "-r", remote, folder)
        get_run_logger().info("dvc pull -R %s: %s", folder, summary or "nothing tracked")


@task(name="dvc-push", retries=3, retry_delay_seconds=10)
def push_outputs(root: Path, stages: list[str], remote: str = TEAM_REMOTE) -> None:
    """Push the outputs of `stages` and the run-cache to DVC remote `remote` (I/O: retried).

    Args:
        root: the workspace whose stages ran.
        stages: the stages whose outputs (as dvc.lock records them) are pushed.
        remote: the DVC remote's name.
    """
    summary = transfer(root, "push", "--run-cache", "-r", remote, *stages)
    get_run_logger().info("dvc push -r %s (%s): %s", remote, ", ".join(stages), summary)
