"""Image folders under inputs/ are DVC-tracked inputs: `dvc add`-ed and pushed, a fresh clone with
the team remote gets them (the flows' `pull_inputs`) and finds the data stage up to date, and
changing an image re-runs the stage that reads them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect.logging import disable_run_logger

from tasks.pipeline import pull_inputs
from tests.flows.conftest import GIT, dvc, make_repo_copy, params_of, write_params

pytestmark = pytest.mark.slow

SHAPES = "inputs/vae/shapes"


def write_images(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name in ("circles", "squares"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(4):
            Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(folder / name / f"{index}.png")


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def commit(root: Path, message: str) -> None:
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=root, check=True)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    """A repo whose VAE reads a `dvc add`-ed folder, its data stage run and everything pushed."""
    folder = tmp_path_factory.mktemp("inputs")
    root, remote = make_repo_copy(folder / "repo"), folder / "remote"
    write_images(root / SHAPES, seed=0)
    ok(dvc(root, "add", SHAPES))
    params = params_of(root)
    params["vae"]["data"].update(dataset="folder", folder=SHAPES, image_size=8, channels=1, test_split=0.25)
    write_params(root, params)
    ok(dvc(root, "remote", "add", "--local", "--default", "team", str(remote)))
    assert "Running stage 'vae_data'" in ok(dvc(root, "repro", "--single-item", "vae_data"))
    ok(dvc(root, "push"))
    commit(root, "shapes for the VAE")
    return root, remote


def test_a_fresh_clone_pulls_the_folder_and_finds_the_data_stage_up_to_date(shared, tmp_path):
    root, remote = shared
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    ok(dvc(clone, "remote", "add", "--local", "--default", "team", str(remote)))
    assert not (clone / SHAPES).exists()  # git holds only the .dvc file

    with disable_run_logger():
        pull_inputs.fn(clone, "vae")

    pulled = sorted(path.relative_to(clone) for path in (clone / SHAPES).rglob("*.png"))
    assert pulled == sorted(path.relative_to(root) for path in (root / SHAPES).rglob("*.png"))
    assert all((clone / path).read_bytes() == (root / path).read_bytes() for path in pulled)
    ok(dvc(clone, "pull", "vae_data"))
    assert json.loads(ok(dvc(clone, "status", "--json", "vae_data")).strip()) == {}


def test_a_technique_without_an_inputs_folder_pulls_nothing(shared, tmp_path):
    root, _ = shared
    with disable_run_logger():
        pull_inputs.fn(root, "text")  # no inputs/text: no DVC call, no error


def test_changing_an_image_reruns_the_data_stage(shared):
    root, _ = shared
    image = root / SHAPES / "circles" / "0.png"
    original = image.read_bytes()
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(image)
    try:
        status = json.loads(ok(dvc(root, "status", "--json", "vae_data")))
        assert {"changed deps": {"inputs/vae": "modified"}} in status["vae_data"]
        assert "Running stage 'vae_data'" in ok(dvc(root, "repro", "--single-item", "vae_data"))
    finally:
        image.write_bytes(original)
        ok(dvc(root, "repro", "--single-item", "vae_data"))
