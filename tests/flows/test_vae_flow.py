"""The VAE flow end to end on a small slice of Fashion-MNIST: DVC stages, one MLflow child run
per grid point with train and test losses per epoch, latent-space images and models that load
back and decode, the comparison on the parent, and bad input (NaN loss, an empty image folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from flows.vae import vae_flow
from tasks.grid import TrainingFailed
from tasks.images import AXIS_LABEL_MARGIN
from tasks.pipeline import StageFailed
from tests.flows.conftest import (
    children_of,
    dvc,
    flow_run_in_repo_copy,
    make_repo_copy,
    params_of,
    write_params,
)

pytestmark = pytest.mark.slow

SAMPLE_IMAGES = {
    "latent_grid.png",
    "latent_scatter.png",
    "reconstructions.png",
    "interpolation.png",
    "concept_00.png",
}


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    with flow_run_in_repo_copy(tmp_path_factory.mktemp("vae-flow"), vae_flow) as run:
        yield run


def test_flow_runs_the_dvc_stages_and_leaves_nothing_to_reproduce(flow_run):
    root, result = flow_run
    assert result["stages_run"] == ["vae_data", "vae_train", "vae_sample"]
    status = dvc(root, "status", "--json", "vae_sample")
    assert status.returncode == 0 and json.loads(status.stdout) == {}


def test_a_sampling_knob_reruns_sampling_but_not_training(flow_run):
    root, _ = flow_run
    params = params_of(root)
    original = params["vae"]["sample"]["grid_size"]
    params["vae"]["sample"]["grid_size"] = original + 1
    write_params(root, params)
    try:
        stale = json.loads(dvc(root, "status", "--json").stdout)
    finally:
        params["vae"]["sample"]["grid_size"] = original
        write_params(root, params)
    assert "vae_sample" in stale and "vae_train" not in stale and "vae_data" not in stale


def test_one_child_run_per_grid_point_with_losses_per_epoch_and_sample_images(flow_run):
    root, result = flow_run
    params = params_of(root)["vae"]
    children = children_of(result)
    assert sorted(int(c.data.params["latent_dim"]) for c in children) == sorted(params["model"]["latent_dim"])
    client = mlflow.MlflowClient()
    for child in children:
        assert child.info.status == "FINISHED"
        assert (
            child.data.params["dataset"] == "fashion_mnist" and child.data.params["image_shape"] == "28x28x1"
        )
        for split in ("train", "test"):
            history = {
                term: [m.value for m in client.get_metric_history(child.info.run_id, f"{split}/{term}")]
                for term in ("total_loss", "reconstruction_loss", "kl_loss")
            }
            assert all(len(values) == params["train"]["epochs"] for values in history.values())
            for total, reconstruction, kl in zip(*history.values()):
                assert total == pytest.approx(reconstruction + kl, rel=1e-4)  # beta = 1
            assert 100 < history["total_loss"][-1] < 700  # per image, BCE summed over 784 pixels
        assert child.data.metrics["test_total_loss"] == pytest.approx(history["total_loss"][-1])
        artifacts = {Path(a.path).name for a in client.list_artifacts(child.info.run_id, "samples")}
        assert artifacts == SAMPLE_IMAGES
        grid_size = params["sample"]["grid_size"]
        with Image.open(client.download_artifacts(child.info.run_id, "samples/latent_grid.png")) as grid:
            # The grid, with the ranges of its two axes in margins under it and at its left.
            assert grid.size == (AXIS_LABEL_MARGIN + grid_size * 28, grid_size * 28 + AXIS_LABEL_MARGIN)
        shares = client.get_metric_history(child.info.run_id, "concept_00/target_share")
        assert sorted(m.step for m in shares) == [
            round(100 * s) for s in params["sample"]["concept_strengths"]
        ]
        assert all(0 <= m.value <= 1 for m in shares)


def test_encoder_and_decoder_load_back_from_mlflow_and_decode(flow_run):
    _, result = flow_run
    for child in children_of(result):
        latent_dim = int(child.data.params["latent_dim"])
        encoder = mlflow.keras.load_model(child.data.tags["encoder_uri"])
        decoder = mlflow.keras.load_model(child.data.tags["decoder_uri"])
        images = np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)).astype("float32")
        z_mean, z_log_var = encoder.predict(images, verbose=0)
        assert z_mean.shape == z_log_var.shape == (3, latent_dim)
        decoded = decoder.predict(z_mean, verbose=0)
        assert decoded.shape == (3, 28, 28, 1) and 0 <= decoded.min() and decoded.max() <= 1


def test_parent_run_has_the_comparison_of_latent_grids(flow_run):
    _, result = flow_run
    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["vae.data.dataset"] == "fashion_mnist"
    best = min(c.data.metrics["test_total_loss"] for c in children_of(result))
    assert parent.data.metrics["best_test_total_loss"] == pytest.approx(best)
    with Image.open(client.download_artifacts(parent.info.run_id, "comparison.png")) as comparison:
        assert comparison.mode == "RGB" and comparison.height > 420  # one labelled tile per point


def test_nan_loss_keeps_the_last_good_models_and_fails_the_runs(flow_run, monkeypatch):
    root, first = flow_run
    params = params_of(root)
    original = params["vae"]["train"]
    params["vae"]["train"] = {**original, "learning_rate": 1.0e6, "epochs": 3}
    write_params(root, params)
    try:
        with pytest.raises(TrainingFailed, match=r"loss became NaN in epoch \d"):
            vae_flow(root=root)
    finally:
        params["vae"]["train"] = original
        write_params(root, params)
    runs = mlflow.search_runs([first["experiment_id"]], output_format="list", order_by=["start_time DESC"])
    parent = [run for run in runs if "mlflow.parentRunId" not in run.data.tags][0]
    assert parent.info.status == "FAILED"
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert children and all(child.info.status == "FAILED" for child in children)
    metrics = json.loads((root / "outputs/vae/train_metrics.json").read_text())
    for name, values in metrics.items():
        kept = root / "models/vae" / name / "decoder.keras"
        assert kept.is_file() == (values["epochs_completed"] > 0)


def test_an_empty_image_folder_fails_in_one_line_and_keeps_the_data(flow_run, tmp_path):
    root, _ = flow_run
    before = (root / "data/vae/train.npz").read_bytes()
    folder = tmp_path / "images"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "notes.txt").write_text("not an image")
    params = params_of(root)
    original = params["vae"]["data"]
    params["vae"]["data"] = {**original, "dataset": "folder", "folder": str(folder)}
    write_params(root, params)
    try:
        with pytest.raises(StageFailed, match=r"has no readable images \(1 files looked at\)") as failure:
            vae_flow(root=root)
    finally:
        params["vae"]["data"] = original
        write_params(root, params)
    assert not failure.value.retryable
    assert (root / "data/vae/train.npz").read_bytes() == before


def test_negative_beta_fails_in_one_line_before_anything_runs(tmp_path):
    root = make_repo_copy(tmp_path / "repo")
    params = params_of(root)
    params["vae"]["train"]["beta"] = [1.0, -0.5]
    write_params(root, params)
    result = subprocess.run(
        [sys.executable, "-m", "flows.vae", "--root", str(root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "vae.train.beta.1" in error
    assert not (root / "data").exists() and not (root / "mlflow").exists()
