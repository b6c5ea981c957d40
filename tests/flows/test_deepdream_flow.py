"""The DeepDream flow end to end on a small photo with the offline pretrained backbone: DVC
stages, one MLflow child run per layer setting, the comparison grid, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from flows.deepdream import deepdream_flow
from tasks.pipeline import StageFailed
from tests.flows.conftest import (
    dvc,
    flow_run_in_repo_copy,
    make_repo_copy,
    params_of,
    write_params,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    with flow_run_in_repo_copy(tmp_path_factory.mktemp("deepdream-flow"), deepdream_flow) as run:
        yield run


def test_flow_runs_the_dvc_stages_and_leaves_nothing_to_reproduce(flow_run):
    root, result = flow_run
    assert result["stages_run"] == ["deepdream_image", "deepdream_dream"]
    status = dvc(root, "status", "--json", "deepdream_dream")
    assert status.returncode == 0 and json.loads(status.stdout) == {}


def test_one_child_run_per_layer_setting_with_its_dream_and_losses(flow_run):
    root, result = flow_run
    params = params_of(root)["deepdream"]
    num_settings = len(params["layer_settings"]) + params["random_settings"]["count"]
    children = mlflow.search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'",
        output_format="list",
    )
    assert len(children) == num_settings
    input_size = Image.open(root / "data/deepdream/image.png").size
    client = mlflow.MlflowClient()
    steps_per_dream = params["num_octave"] * params["iterations"]
    for child in children:
        assert child.data.params["backbone"] == "hed_vgg16"
        assert any(key.startswith("layer.block") for key in child.data.params)
        losses = [metric.value for metric in client.get_metric_history(child.info.run_id, "loss")]
        assert len(losses) == steps_per_dream
        first_octave = losses[: params["iterations"]]
        assert first_octave[-1] > first_octave[0]  # gradient ascent raises the loss
        (artifact,) = [a.path for a in client.list_artifacts(child.info.run_id) if a.path.endswith(".png")]
        with Image.open(client.download_artifacts(child.info.run_id, artifact)) as dream:
            assert dream.size == input_size and dream.mode == "RGB"


def test_parent_run_has_params_input_and_a_comparison_grid_with_a_tile_per_setting(flow_run):
    root, result = flow_run
    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["deepdream.backbone"] == "hed_vgg16"
    artifacts = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert {"grid.png", "input"} <= artifacts
    grid = np.asarray(Image.open(client.download_artifacts(parent.info.run_id, "grid.png")))
    num_tiles = 1 + len(result["metrics"])  # the original and one dream per setting
    assert grid.shape[1] > num_tiles * 96  # tiles are scaled to 256 px high: wider than the input
    settings = json.loads((root / "outputs/deepdream/dreams/results.json").read_text())["settings"]
    assert list(result["metrics"]) == [Path(setting["image"]).stem for setting in settings]


def test_unknown_layer_lists_the_valid_ones_and_keeps_earlier_dreams(flow_run):
    root, result = flow_run
    dreams = root / "outputs/deepdream/dreams"
    before = {path.name: path.read_bytes() for path in dreams.iterdir()}
    params = params_of(root)
    original = params["deepdream"]["layer_settings"]
    params["deepdream"]["layer_settings"] = [{"mixed4": 1.0}]
    write_params(root, params)
    try:
        with pytest.raises(
            StageFailed, match=r"hed_vgg16 has no layer 'mixed4'; valid layers: .*block4_conv3"
        ):
            deepdream_flow(root=root)
    finally:
        params["deepdream"]["layer_settings"] = original
        write_params(root, params)
    assert {path.name: path.read_bytes() for path in dreams.iterdir()} == before
    runs = mlflow.search_runs([result["experiment_id"]], output_format="list", order_by=["start_time DESC"])
    assert [run for run in runs if "mlflow.parentRunId" not in run.data.tags][0].info.status == "FAILED"


def test_a_file_that_is_not_an_image_fails_without_leaving_an_input_behind(tmp_path, mlflow_store):
    root = make_repo_copy(tmp_path / "repo")
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is text, not a JPEG")
    params = params_of(root)
    params["deepdream"]["image"] = str(not_an_image)
    write_params(root, params)
    with pytest.raises(StageFailed, match="notes.jpg is not a readable image") as failure:
        deepdream_flow(root=root)
    assert not failure.value.retryable
    assert not (root / "data/deepdream/image.png").exists()
