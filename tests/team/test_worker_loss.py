"""A worker killed in the middle of a sweep's point (flows/sweep.py): its flow run ends Crashed,
the sweep submits the point again, the other worker takes it and the GAN's training resumes from
the last epoch it finished, kept under the workers' shared $GENDL_RESUME_DIR. Runs last among the
team tests (it kills a worker, then starts it again)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.team.conftest import Stack, flow_run_logs
from tests.team.helpers import team

pytestmark = pytest.mark.slow

EPOCHS = 20  # about a second each: the kill lands early, the retry trains the rest
KILL_AFTER_EPOCH = 2
LABEL = f"label_noise=0.1, epochs={EPOCHS}"
SWEEP_TIMEOUT = 900  # the kill, about 90-120 s until the run is marked Crashed, then the retry


def wait_until(condition, sweep: subprocess.Popen, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert sweep.poll() is None, (
            f"the sweep ended while waiting for {what}: {sweep.stdout.read()[-3000:]}"
        )
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)
    return value


def point_run(mlflow_client, status: str):
    experiments = [experiment.experiment_id for experiment in mlflow_client.search_experiments()]
    runs = mlflow_client.search_runs(
        experiments, filter_string=f"tags.`sweep.point` = '{LABEL}' and attributes.status = '{status}'"
    )
    return runs[0] if runs else None


def finished_epoch(resume: Path) -> int:
    """The last epoch the GAN point's resume checkpoint holds (tasks/gan/resume.py's manifest)."""
    manifests = list((resume / "gan").rglob("checkpoint.json"))
    return max((json.loads(path.read_text())["epoch"] for path in manifests), default=0)


@pytest.fixture
def restart_workers(stack: Stack):
    yield
    started = team("start", "--dir", str(stack.directory))  # starts the killed worker again
    assert started.returncode == 0, started.stdout + started.stderr


def test_a_point_whose_worker_dies_is_retried_on_the_other_worker_and_resumes(
    stack: Stack, deployed: Path, mlflow_client, restart_workers
):
    sweep = subprocess.Popen(
        [
            sys.executable, "-m", "flows.sweep", "gan",
            "--axis", "gan.train.label_noise=0.1", "--axis", f"gan.train.epochs={EPOCHS}",
        ],
        cwd=deployed, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        running = wait_until(
            lambda: point_run(mlflow_client, "RUNNING"), sweep, 600, "the point's run to start"
        )
        worker = running.data.tags["sweep.worker"]
        resume = stack.directory / "resume"
        wait_until(
            lambda: finished_epoch(resume) >= KILL_AFTER_EPOCH,
            sweep,
            300,
            f"epoch {KILL_AFTER_EPOCH} to finish",
        )
        # The worker process dies (SIGKILL to its process group): its flow run goes with it.
        worker_pid = int((stack.directory / "run" / f"worker-{worker.rsplit('-', 1)[1]}.pid").read_text())
        os.killpg(worker_pid, signal.SIGKILL)
        killed_at_epoch = finished_epoch(resume)
        assert killed_at_epoch < EPOCHS, "training ended before the kill: raise EPOCHS"
        output, _ = sweep.communicate(timeout=SWEEP_TIMEOUT)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, output[-3000:]
    summary = json.loads(output[output.rindex("\n{") :])
    assert summary["sweep.completed_points"] == 1, summary

    # The crashed attempt's run was ended (FAILED by its dying flow run, or KILLED by the sweep when
    # nothing ended it); the retry ran on the other worker, in another workspace, and finished.
    assert "crashed" in output and "submitting it again" in output
    assert mlflow_client.get_run(running.info.run_id).info.status in ("FAILED", "KILLED")
    retry = point_run(mlflow_client, "FINISHED")
    assert retry.data.tags["sweep.worker"] != worker
    assert retry.data.tags["sweep.worker"].startswith(f"gendl-{socket.gethostname()}-")
    assert retry.data.tags["sweep.workspace"] != running.data.tags["sweep.workspace"]

    # It resumed after the last finished epoch: every epoch is recorded once, in order.
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        with get_client(sync_client=True) as client:
            logs = [
                record.message for record in flow_run_logs(client, retry.data.tags["prefect.flow_run_id"])
            ]
    # The flow-run process outlives its worker for a few epochs, until Prefect ends it: the retry
    # resumes after whichever epoch was the last to finish.
    resumed = [int(match) for line in logs for match in re.findall(r"resuming after epoch (\d+)", line)]
    assert len(resumed) == 1 and killed_at_epoch <= resumed[0] < EPOCHS, resumed
    grid_point = mlflow_client.search_runs(
        [retry.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{retry.info.run_id}'"
    )
    assert len(grid_point) == 1
    epochs = [
        metric.step for metric in mlflow_client.get_metric_history(grid_point[0].info.run_id, "epoch_d_loss")
    ]
    assert sorted(epochs) == list(range(1, EPOCHS + 1)), epochs
    steps = [metric.step for metric in mlflow_client.get_metric_history(grid_point[0].info.run_id, "d_loss")]
    assert len(steps) == len(set(steps)), "a training step was recorded twice"
