"""The GAN flow end to end on a small slice of Fashion-MNIST: DVC stages, the scoring classifier,
one MLflow child run per grid point with d_loss/g_loss per step, the Frechet distance, the
classifier's confident share (generated and real) and the fixed-latent grid per epoch (raw and moving-average generator), generators that load back, the
final samples side by side on the parent, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest

from flows.gan import gan_flow
from tasks.grid import TrainingFailed
from tasks.storage import read_rows
from tests.flows.conftest import (
    children_of,
    dvc,
    flow_run_in_repo_copy,
    make_repo_copy,
    params_of,
    write_params,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    with flow_run_in_repo_copy(tmp_path_factory.mktemp("gan-flow"), gan_flow) as run:
        yield run


def test_flow_runs_the_dvc_stages_and_leaves_nothing_to_reproduce(flow_run):
    root, result = flow_run
    assert result["stages_run"] == ["gan_data", "gan_classifier", "gan_train"]
    status = dvc(root, "status", "--json", "gan_train")
    assert status.returncode == 0 and json.loads(status.stdout) == {}
    assert not list((root / ".gendl" / "gan").iterdir())  # finished points leave nothing to resume


def test_a_label_noise_change_retrains_but_keeps_the_data_and_the_classifier(flow_run):
    root, _ = flow_run
    params = params_of(root)
    original = params["gan"]["train"]["label_noise"]
    params["gan"]["train"]["label_noise"] = [0.1]
    write_params(root, params)
    try:
        stale = json.loads(dvc(root, "status", "--json").stdout)
    finally:
        params["gan"]["train"]["label_noise"] = original
        write_params(root, params)
    assert "gan_train" in stale and "gan_classifier" not in stale and "gan_data" not in stale


def test_one_child_run_per_grid_point_with_losses_scores_and_epoch_grids(flow_run):
    root, result = flow_run
    settings = params_of(root)["gan"]
    children = children_of(result)
    assert sorted(float(c.data.params["label_noise"]) for c in children) == sorted(
        settings["train"]["label_noise"]
    )
    client = mlflow.MlflowClient()
    epochs = settings["train"]["epochs"]
    steps = epochs * -(-settings["data"]["max_images"] // settings["train"]["batch_size"])
    for child in children:
        assert child.info.status == "FINISHED"
        for name in ("d_loss", "g_loss"):
            history = client.get_metric_history(child.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(1, steps + 1))
            assert all(np.isfinite(m.value) and m.value > 0 for m in history)
        for name in ("frechet_distance", "ema_frechet_distance"):
            history = client.get_metric_history(child.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1))
            assert all(m.value >= 0 for m in history)
        for name in ("confident_share", "ema_confident_share", "real_confident_share"):
            history = client.get_metric_history(child.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1))
            assert all(0 <= m.value <= 1 for m in history)
        real_shares = {m.value for m in client.get_metric_history(child.info.run_id, "real_confident_share")}
        assert len(real_shares) == 1  # measured once
        for name in ("effective_classes", "ema_effective_classes", "real_effective_classes"):
            history = client.get_metric_history(child.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1))
            assert all(1 <= m.value <= 10 for m in history)
        images = [
            a.path for a in client.list_artifacts(child.info.run_id, "images") if a.path.endswith(".png")
        ]
        for key in ("samples", "ema_samples"):
            keyed = [path for path in images if path.split("/")[-1].startswith(f"{key}+step+")]
            assert sorted(int(path.split("+step+")[1].split("+")[0]) for path in keyed) == list(
                range(1, epochs + 1)
            )


def test_generators_load_back_from_mlflow_and_generate(flow_run):
    root, result = flow_run
    latent_dim = params_of(root)["gan"]["model"]["latent_dim"]
    for child in children_of(result):
        for name in ("generator", "ema_generator"):
            generator = mlflow.keras.load_model(child.data.tags[f"{name}_uri"])
            images = generator.predict(np.random.default_rng(0).standard_normal((3, latent_dim)), verbose=0)
            assert images.shape == (3, 28, 28, 1) and 0 <= images.min() and images.max() <= 1


def test_parent_run_has_the_final_samples_side_by_side_and_the_best_score(flow_run):
    _, result = flow_run
    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["gan.data.dataset"] == "fashion_mnist"
    best = min(c.data.metrics["final_frechet_distance"] for c in children_of(result))
    assert parent.data.metrics["best_frechet_distance"] == pytest.approx(best)
    shares = [
        c.data.metrics[f"final_{key}"]
        for c in children_of(result)
        for key in ("confident_share", "ema_confident_share")
    ]
    assert parent.data.metrics["best_confident_share"] == pytest.approx(max(shares))
    real = {c.data.metrics["final_real_confident_share"] for c in children_of(result)}
    assert real == {parent.data.metrics["real_confident_share"]}  # one reference for every point
    spreads = [
        c.data.metrics[f"final_{key}"]
        for c in children_of(result)
        for key in ("effective_classes", "ema_effective_classes")
    ]
    assert parent.data.metrics["best_effective_classes"] == pytest.approx(max(spreads))
    assert 1 <= parent.data.metrics["real_effective_classes"] <= 10
    assert 0 < parent.data.metrics["classifier.test_accuracy"] <= 1
    assert "comparison.png" in [a.path for a in client.list_artifacts(parent.info.run_id)]


def test_a_nan_loss_fails_the_point_the_parent_and_the_flow(flow_run):
    root, first = flow_run
    params = params_of(root)
    original = params["gan"]["train"]
    params["gan"]["train"] = {**original, "learning_rate": [1.0e6], "label_noise": [0.05]}
    write_params(root, params)
    try:
        with pytest.raises(TrainingFailed, match=r"loss became NaN in epoch 1; no epoch finished"):
            gan_flow(root=root)
    finally:
        params["gan"]["train"] = original
        write_params(root, params)
    runs = mlflow.search_runs([first["experiment_id"]], output_format="list", order_by=["start_time DESC"])
    parent = [run for run in runs if "mlflow.parentRunId" not in run.data.tags][0]
    assert parent.info.status == "FAILED"
    (child,) = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert child.info.status == "FAILED" and "NaN" in child.data.tags["instability"]
    assert not list((root / "models/gan/point_00").glob("*.keras"))  # no good epoch to keep


def test_an_image_size_the_generator_cannot_reach_fails_in_one_line_before_anything_runs(tmp_path):
    root = make_repo_copy(tmp_path / "repo")
    params = params_of(root)
    params["gan"]["data"]["image_size"] = 30
    write_params(root, params)
    result = subprocess.run(
        [sys.executable, "-m", "flows.gan", "--root", str(root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "gan.data.image_size" in error and "multiple of 4" in error
    assert not (root / "data").exists() and not (root / "mlflow").exists()


def test_a_killed_training_resumes_at_its_last_finished_epoch(flow_run):
    root, _ = flow_run
    params = params_of(root)
    original = params["gan"]["train"]
    params["gan"]["train"] = {**original, "label_noise": [0.05], "epochs": 3}
    write_params(root, params)
    try:
        training = subprocess.Popen(
            [sys.executable, "-m", "tasks.gan.steps", "train"], cwd=root, stdout=subprocess.DEVNULL
        )
        try:  # the checkpoint of an epoch is saved after its row is written: kill once epoch 2's row is there
            deadline = time.monotonic() + 300
            while not any(len(read_rows(path)) >= 2 for path in root.glob(".gendl/gan/*/epochs.csv")):
                assert training.poll() is None and time.monotonic() < deadline, (
                    "training ended before epoch 2"
                )
                time.sleep(0.2)
        finally:
            training.kill()
            training.wait()
        (first_grid,) = root.glob(".gendl/gan/*/grids/epoch_001.png")
        written = first_grid.stat().st_mtime_ns

        result = gan_flow(root=root)
    finally:
        params["gan"]["train"] = original
        write_params(root, params)

    # Resumed, not restarted: epoch 1's grid is the killed run's (copied with its time stamp).
    assert (root / "outputs/gan/training/point_00/grids/epoch_001.png").stat().st_mtime_ns == written
    rows = read_rows(root / "outputs/gan/training/point_00/epochs.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    steps = [row["step"] for row in read_rows(root / "outputs/gan/training/point_00/steps.csv")]
    assert steps == list(range(1, len(steps) + 1))
    (child,) = children_of(result)
    assert child.info.status == "FINISHED"
