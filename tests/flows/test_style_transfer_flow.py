"""The style transfer flow end to end on small images with the offline pretrained backbone: DVC
stages, one MLflow child run per grid point with losses, stepped snapshots and its image, the
labelled comparison grid on the parent, and bad input."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from flows.style_transfer import style_transfer_flow
from tasks.images import resolve_source
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


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    with flow_run_in_repo_copy(tmp_path_factory.mktemp("style-transfer-flow"), style_transfer_flow) as run:
        yield run


def test_flow_runs_the_dvc_stages_and_leaves_nothing_to_reproduce(flow_run):
    root, result = flow_run
    assert result["stages_run"] == ["style_transfer_images", "style_transfer_stylize"]
    status = dvc(root, "status", "--json", "style_transfer_stylize")
    assert status.returncode == 0 and json.loads(status.stdout) == {}


def test_a_loss_weight_change_reruns_the_transfer_but_not_the_images(flow_run):
    root, _ = flow_run
    params = params_of(root)
    original = params["style_transfer"]["style_weight"]
    params["style_transfer"]["style_weight"] = [1.0e-3]
    write_params(root, params)
    try:
        stale = json.loads(dvc(root, "status", "--json").stdout)
    finally:
        params["style_transfer"]["style_weight"] = original
        write_params(root, params)
    assert "style_transfer_stylize" in stale and "style_transfer_images" not in stale


def test_one_child_run_per_grid_point_with_losses_snapshots_and_final_image(flow_run):
    root, result = flow_run
    params = params_of(root)["style_transfer"]
    expected = {
        (style_weight, optimizer)
        for style_weight, optimizer in itertools.product(params["style_weight"], params["optimizer"])
    }
    children = children_of(result)
    assert {(float(c.data.params["style_weight"]), c.data.params["optimizer"]) for c in children} == expected
    content_size = Image.open(root / "data/style_transfer/content.png").size
    client = mlflow.MlflowClient()
    for child in children:
        assert child.data.params["backbone"] == "hed_vgg16"
        assert child.data.params["style_layers"].startswith("block1_conv1,")
        history = {
            term: [m.value for m in client.get_metric_history(child.info.run_id, term)]
            for term in ("loss", "content_loss", "style_loss", "total_variation_loss")
        }
        assert all(len(values) == params["iterations"] for values in history.values())
        assert min(history["loss"]) < history["loss"][0]  # the optimiser lowers the loss
        assert history["content_loss"][0] < 1e-3 * max(history["content_loss"])  # starts at the content
        snapshots = [
            a.path for a in client.list_artifacts(child.info.run_id, "images") if a.path.endswith(".png")
        ]
        steps = sorted(int(path.split("+step+")[1].split("+")[0]) for path in snapshots)
        assert steps == list(
            range(params["snapshot_every"], params["iterations"] + 1, params["snapshot_every"])
        )
        with Image.open(client.download_artifacts(child.info.run_id, "final.png")) as final:
            assert final.size == content_size and final.mode == "RGB"


def test_parent_run_has_the_inputs_and_a_labelled_grid_with_a_tile_per_point(flow_run):
    root, result = flow_run
    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["style_transfer.backbone"] == "hed_vgg16"
    inputs = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "inputs")}
    assert inputs == {"content.png", "style_00.png", "style_01.png"}
    grid = np.asarray(Image.open(client.download_artifacts(parent.info.run_id, "grid.png")))
    num_tiles = 3 + len(result["metrics"])  # content, two styles, one image per point
    assert num_tiles == 7 and grid.shape[0] > 256 * 2  # tiles are 256 px high, four to a row
    results = json.loads((root / "outputs/style_transfer/results/results.json").read_text())
    assert sorted(point["label"] for point in results["points"]) == sorted(
        c.info.run_name for c in children_of(result)
    )


def test_style_images_of_other_sizes_keep_their_aspect_ratio_at_the_shared_height(flow_run):
    root, _ = flow_run
    params = params_of(root)["style_transfer"]
    sources = [params["content_image"]] + [style["image"] for style in params["style_images"]]
    stored = ["content", "style_00", "style_01"]
    for source, name in zip(sources, stored):
        width, height = Image.open(resolve_source(source)).size
        expected = (round(width * params["height"] / height), params["height"])
        assert Image.open(root / f"data/style_transfer/{name}.png").size == expected


def test_unknown_layer_lists_the_valid_ones_and_keeps_earlier_results(flow_run):
    root, result = flow_run
    results = root / "outputs/style_transfer/results"
    before = {path.relative_to(results): path.read_bytes() for path in results.rglob("*") if path.is_file()}
    params = params_of(root)
    original = params["style_transfer"]["style_layers"]
    params["style_transfer"]["style_layers"] = [["block1_conv1", "conv1_1"]]
    write_params(root, params)
    try:
        with pytest.raises(
            StageFailed, match=r"hed_vgg16 has no layer 'conv1_1'; valid layers: .*block5_conv3"
        ):
            style_transfer_flow(root=root)
    finally:
        params["style_transfer"]["style_layers"] = original
        write_params(root, params)
    after = {path.relative_to(results): path.read_bytes() for path in results.rglob("*") if path.is_file()}
    assert after == before
    runs = mlflow.search_runs([result["experiment_id"]], output_format="list", order_by=["start_time DESC"])
    assert [run for run in runs if "mlflow.parentRunId" not in run.data.tags][0].info.status == "FAILED"


def test_an_unreadable_style_image_fails_without_leaving_inputs_behind(tmp_path, mlflow_store):
    root = make_repo_copy(tmp_path / "repo")
    not_an_image = tmp_path / "style.png"
    not_an_image.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is missing")
    params = params_of(root)
    params["style_transfer"]["style_images"].append({"image": str(not_an_image), "sha256": "", "weight": 1.0})
    write_params(root, params)
    with pytest.raises(StageFailed, match="style.png is not a readable image") as failure:
        style_transfer_flow(root=root)
    assert not failure.value.retryable
    assert not (root / "data/style_transfer").exists() or not any((root / "data/style_transfer").iterdir())


def test_weights_zero_everywhere_fail_in_one_line_before_anything_runs(tmp_path):
    # Each params error's wording is unit-tested; this is the path from the command line.
    root = make_repo_copy(tmp_path / "repo")
    params = params_of(root)
    params["style_transfer"].update(content_weight=[0.0], style_weight=[0.0], total_variation_weight=[0.0])
    write_params(root, params)
    result = subprocess.run(
        [sys.executable, "-m", "flows.style_transfer", "--root", str(root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "content_weight, style_weight and total_variation_weight are 0 everywhere" in error
    assert not (root / "data").exists() and not (root / "mlflow").exists()
