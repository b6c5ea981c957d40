"""The headless-browser checks of tests/team/browser.py on the team stack's MLflow server (PostgreSQL,
proxied artifacts): the runs table shows a parent run and its nested child, the child's PNG renders
on its artifact page, and a run or artifact that does not exist fails its check."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.team.browser import artifact_image_renders, runs_table_shows
from tests.team.conftest import Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow


ARTIFACT = "samples/grid.png"


@dataclasses.dataclass
class Logged:
    tracking_url: str
    experiment_id: str
    parent_id: str
    child_id: str


@pytest.fixture(scope="module")
def tracking_url(stack: Stack) -> str:
    return stack.mlflow_uri


def grid_image(height: int = 96, width: int = 144) -> np.ndarray:
    """A colour gradient under white grid lines: obvious at a glance in a screenshot."""
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([255 * columns // width, 255 * rows // height, np.full_like(rows, 160)], axis=-1)
    image[::12] = image[:, ::12] = 255
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def logged(tracking_url: str) -> Logged:
    """An experiment with a parent run and one nested child run that logged ARTIFACT."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = mlflow.MlflowClient(tracking_uri=tracking_url)
    experiment_id = client.create_experiment("browser-check")
    parent_id = client.create_run(experiment_id, run_name="parent-run").info.run_id
    child_id = client.create_run(
        experiment_id, run_name="child-run", tags={MLFLOW_PARENT_RUN_ID: parent_id}
    ).info.run_id
    client.log_image(child_id, grid_image(), artifact_file=ARTIFACT)
    client.set_terminated(child_id)
    client.set_terminated(parent_id)
    return Logged(tracking_url, experiment_id, parent_id, child_id)


def test_runs_table_shows_the_parent_and_its_nested_child(logged: Logged, page: Page, tmp_path: Path) -> None:
    began = time.monotonic()
    names = ["parent-run", "child-run"]
    screenshot = runs_table_shows(
        page, logged.tracking_url, logged.experiment_id, names, screenshot=tmp_path / "runs.png"
    )
    print(f"runs table check: {time.monotonic() - began:.1f} s, screenshot {screenshot}")
    assert screenshot == tmp_path / "runs.png" and screenshot.stat().st_size > 0


def test_the_childs_png_renders_on_its_artifact_page(logged: Logged, page: Page, tmp_path: Path) -> None:
    began = time.monotonic()
    screenshot = artifact_image_renders(
        page,
        logged.tracking_url,
        logged.experiment_id,
        logged.child_id,
        ARTIFACT,
        screenshot=tmp_path / "artifact.png",
    )
    print(f"artifact image check: {time.monotonic() - began:.1f} s, screenshot {screenshot}")
    assert screenshot == tmp_path / "artifact.png" and screenshot.stat().st_size > 0


def test_a_run_that_does_not_exist_fails_the_check(logged: Logged, page: Page, tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"does not show run\(s\) \['no-such-run'\]") as failure:
        runs_table_shows(
            page,
            logged.tracking_url,
            logged.experiment_id,
            ["parent-run", "no-such-run"],
            timeout_s=4,
            screenshot=tmp_path / "missing.png",
        )
    assert time.monotonic() - began < 15
    assert "'parent-run'" in str(failure.value)  # the message names what the table does show
    assert (tmp_path / "missing.png").stat().st_size > 0


def test_an_artifact_that_does_not_exist_fails_the_check(logged: Logged, page: Page, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="answered HTTP 404"):
        artifact_image_renders(
            page,
            logged.tracking_url,
            logged.experiment_id,
            logged.child_id,
            "samples/none.png",
            timeout_s=3,
            screenshot=tmp_path / "none.png",
        )
