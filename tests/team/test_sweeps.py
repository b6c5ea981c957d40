"""Sweeps on the team stack (flows/sweep.py): a VAE grid of four points fanned out over the two
workers, the stages they share computed once, the comparison on the sweep's MLflow run (also seen
in the MLflow UI in headless Chromium); a second sweep of the same points trains nothing, even with
the MLflow server restarted while its points run, and a point with bad params fails alone."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.team.conftest import Stack
from tests.team.helpers import team

pytestmark = pytest.mark.slow

AXES = {"vae.train.beta": [0.5, 1.0], "vae.model.latent_dim": [2, 3]}
LABELS = {
    f"beta={beta:g}, latent_dim={dim}"
    for beta in AXES["vae.train.beta"]
    for dim in AXES["vae.model.latent_dim"]
}


def run_sweep(stack: Stack, root: Path, axes: dict) -> dict:
    """The sweep flow in this process, against the stack's Prefect and MLflow servers."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.sweep import sweep

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = stack.mlflow_uri
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
            return sweep("vae", axes, root=root, return_state=True)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def restart_mlflow_when_a_point_runs(stack: Stack, mlflow_client, points: int, restarts: list) -> None:
    """Once `points` point runs have started (beyond those already there), kill the MLflow server's
    process group and start it again (`scripts/team.sh start` starts what is not running); records
    (down, up) wall-clock times in `restarts`."""
    started = set()

    def running_points() -> set[str]:
        experiments = [experiment.experiment_id for experiment in mlflow_client.search_experiments()]
        runs = mlflow_client.search_runs(experiments, filter_string="tags.`sweep.point` != ''")
        return {run.info.run_id for run in runs}

    before = running_points()
    deadline = time.monotonic() + 300
    while len(started - before) < points and time.monotonic() < deadline:
        time.sleep(0.5)
        started = running_points()
    down = time.time()
    os.killpg(int((stack.directory / "run" / "mlflow.pid").read_text()), signal.SIGKILL)
    result = team("start", "--dir", str(stack.directory))
    assert result.returncode == 0, result.stdout + result.stderr
    restarts.append((down, time.time()))


@pytest.fixture(scope="module")
def sweeps(stack: Stack, deployed: Path, mlflow_client) -> Iterator[tuple]:
    """The final states of the two sweeps, the first one's result (read here: with a browser page
    open, Playwright's event loop would make `State.result()` return a coroutine), and when the
    MLflow server was down during the second."""
    first = run_sweep(stack, deployed, AXES)
    restarts: list = []
    restarter = threading.Thread(
        target=restart_mlflow_when_a_point_runs, args=(stack, mlflow_client, 1, restarts)
    )
    restarter.start()
    again = run_sweep(stack, deployed, {**AXES, "vae.train.beta": [*AXES["vae.train.beta"], -0.5]})
    restarter.join()
    yield first, first.result(raise_on_failure=False), again, restarts


def point_runs(mlflow_client, sweep_run) -> dict[str, object]:
    runs = mlflow_client.search_runs(
        [sweep_run.info.experiment_id], filter_string=f"tags.`sweep.id` = '{sweep_run.data.tags['sweep.id']}'"
    )
    return {
        run.data.tags["sweep.point"]: run for run in runs if "sweep.point" in run.data.tags
    }  # not the sweep's


def test_a_sweep_runs_each_point_in_its_own_workspace_side_by_side_and_compares_them(sweeps, mlflow_client):
    first, result, _, _ = sweeps
    assert first.is_completed(), first.message
    parent = mlflow_client.get_run(result["run_id"])
    assert parent.data.tags["sweep.completed_points"] == "4" and parent.data.tags["sweep.failed_points"] == ""
    runs = point_runs(mlflow_client, parent)
    assert set(runs) == LABELS
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in runs.values())
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert len({run.data.tags["sweep.workspace"] for run in runs.values()}) == 4
    workers = {f"gendl-{socket.gethostname()}-{index}" for index in (1, 2)}  # scripts/team.py's names
    assert {run.data.tags["sweep.worker"] for run in runs.values()} <= workers
    # The shared data stage ran once, in its own flow run: every point restored it.
    assert all(run.data.tags["dvc.stages_run"] == "vae_train,vae_sample" for run in runs.values())
    spans = sorted((run.info.start_time, run.info.end_time) for run in runs.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two points overlapped"
    # The comparison: each point's metric, the best one, the images side by side.
    metrics = {row["point"]: row["metric"] for row in result["points"]}
    best = min(metrics, key=metrics.get)
    assert parent.data.tags["sweep.best_point"] == best
    assert parent.data.metrics["best_test_negative_elbo"] == pytest.approx(metrics[best])
    artifacts = {artifact.path for artifact in mlflow_client.list_artifacts(parent.info.run_id)}
    assert {"sweep_comparison.png", "sweep_points.json"} <= artifacts


def test_a_second_sweep_trains_nothing_survives_an_mlflow_restart_and_a_bad_point_fails_alone(
    sweeps, mlflow_client
):
    _, _, again, restarts = sweeps
    assert len(restarts) == 1, "the MLflow server was not restarted during the second sweep"
    assert again.is_failed()
    assert "beta=-0.5" in again.message and "vae.train.beta" in again.message
    parent = mlflow_client.search_runs(
        experiment_ids=[e.experiment_id for e in mlflow_client.search_experiments()],
        filter_string="tags.`sweep.points` = '6'",
    )[0]
    assert parent.data.tags["sweep.completed_points"] == "4"
    failed = parent.data.tags["sweep.failed_points"]
    assert failed.count("beta=-0.5") == 2 and "vae.train.beta" in failed
    # Every point has one run (none lost or made twice by a retried request), the good ones FINISHED.
    experiment = [parent.info.experiment_id]
    every = mlflow_client.search_runs(
        experiment, filter_string=f"tags.`sweep.id` = '{parent.data.tags['sweep.id']}'"
    )
    labels = [run.data.tags["sweep.point"] for run in every if "sweep.point" in run.data.tags]
    assert len(labels) == len(set(labels)), labels
    runs = point_runs(mlflow_client, parent)
    finished = {label: run for label, run in runs.items() if run.info.status == "FINISHED"}
    assert set(finished) == LABELS
    (down, up) = restarts[0]
    assert any(
        run.info.start_time / 1000 < down and run.info.end_time / 1000 > up for run in finished.values()
    ), "no point was running across the MLflow restart"
    assert all(run.data.tags["dvc.stages_run"] == "none (all up to date)" for run in finished.values())


def test_the_sweep_and_its_points_show_in_the_mlflow_ui(stack: Stack, sweeps, mlflow_client, page, tmp_path):
    """What a teammate sees in a browser: the sweep's run with its points nested under it in the
    runs table of the team's MLflow server, and the sweep's comparison image rendering."""
    from tests.team.browser import artifact_image_renders, runs_table_shows

    _, result, _, _ = sweeps
    parent = mlflow_client.get_run(result["run_id"])
    names = [parent.info.run_name, *(run.info.run_name for run in point_runs(mlflow_client, parent).values())]
    experiment = parent.info.experiment_id
    runs_table_shows(page, stack.mlflow_uri, experiment, names, screenshot=tmp_path / "runs.png")
    artifact_image_renders(
        page,
        stack.mlflow_uri,
        experiment,
        parent.info.run_id,
        "sweep_comparison.png",
        screenshot=tmp_path / "sweep.png",
    )
