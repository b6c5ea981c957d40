"""Fixtures for flow and DVC tests: one Prefect test server per session, and throwaway copies
of this repo with tiny params so a whole pipeline runs in seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, TINY_TEXT

GIT = ["git", "-c", "user.name=gendl-tests", "-c", "user.email=tests@gendl.invalid"]


@pytest.fixture(scope="package", autouse=True)
def prefect_server():
    """One ephemeral Prefect server for these tests (it takes 12-25 s to start). Stopped after them:
    its threads draw from Python's global `random`, which seeds Keras's initializers, so a unit test
    that builds the same model twice would get different weights while it runs."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    # No flow's logs go to the server: no test reads them there (tests/team does, from its workers),
    # and on a loaded machine the harness's final drain of a backlog took 40 s.
    with (
        prefect_test_harness(server_startup_timeout=120),
        prefect.settings.temporary_settings(updates={prefect.settings.PREFECT_LOGGING_TO_API_ENABLED: False}),
    ):
        yield


@pytest.fixture(scope="package", autouse=True)
def shared_step_server(prefect_server):
    """One step server (tasks/step_server.py) for these tests' flow runs instead of one per flow run:
    each would import TensorFlow again (~4 s of a core). The flows use a server named in the
    environment; it is removed before tests outside this package run (tests/team starts workers that
    must start their own)."""
    from tasks.step_server import step_server

    with step_server():
        yield


def tiny_params(corpus: Path) -> dict:
    """params.yaml values small enough for a whole pipeline in seconds."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["runtime"].update(seed=7, dtype_policy="float32")
    params["text"]["data"].update(url=corpus.as_uri(), sha256="", maxlen=10, step=2, validation_split=0.2)
    params["text"]["model"].update(units=16)
    params["text"]["train"].update(epochs=2, batch_size=32, epoch_sample_chars=20)
    params["text"]["sample"].update(num_chars=60)
    transformer = params["transformer"]
    transformer["data"].update(
        dataset="text_file",
        url=corpus.as_uri(),
        sha256="",
        max_tokens=60,
        sequence_length=8,
        validation_split=0.2,
    )
    transformer["model"].update(embed_dim=16, dense_dim=32)
    transformer["train"].update(epochs=2, batch_size=16, epoch_sample_prompt="the will", epoch_sample_words=4)
    transformer["sample"].update(prompts=["the will to", "what is"], num_words=5)
    params["deepdream"].update(
        image="bundled:china",
        max_size=96,
        backbone="hed_vgg16",
        step=10.0,
        num_octave=2,
        iterations=3,
        max_loss=0.0,
        tile_size=64,
        layer_settings=[{"block4_conv3": 1.0, "block5_conv1": 1.5}, {"block3_conv3": 1.0}],
        random_settings={
            "count": 1,
            "pool": ["block3_conv3", "block4_conv1"],
            "layers_per_setting": 1,
            "seed": 3,
        },
    )
    params["style_transfer"].update(
        content_image="bundled:china",
        style_images=[
            {"image": "https://img-datasets.s3.amazonaws.com/starry_night.jpg", "sha256": "", "weight": 0.7},
            {"image": "bundled:flower", "sha256": "", "weight": 0.3},
        ],
        height=48,
        backbone="hed_vgg16",
        content_weight=[1.0e-4],
        style_weight=[1.0e-5, 1.0e-4],
        optimizer=["adam", "lbfgs"],
        iterations=6,
        snapshot_every=3,
    )
    vae = params["vae"]
    vae["data"].update(dataset="fashion_mnist", max_train_images=1024, max_test_images=256)
    vae["model"].update(latent_dim=[2, 3])
    vae["train"].update(beta=[1.0], epochs=2, batch_size=64)
    vae["sample"].update(
        grid_size=6,
        num_reconstructions=5,
        interpolation_steps=4,
        concepts=[{"source": "Sneaker", "target": "Ankle boot"}],
        concept_images=4,
    )
    gan = params["gan"]
    gan["data"].update(dataset="fashion_mnist", image_size=28, channels=1, max_images=512)
    gan["model"].update(latent_dim=16, width=0.125, discriminator_width=0.125)
    gan["train"].update(
        epochs=2, batch_size=64, learning_rate=[0.0005], label_noise=[0.05, 0.2], ema_decay=0.9
    )
    gan["score"].update(features="classifier", classifier_epochs=1, num_images=200)
    return params


def make_repo_copy(destination: Path, corpus_text: str = TINY_TEXT * 14) -> Path:
    """A git repo holding this project's files, tiny params and a tiny local corpus."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if name == "dvc.lock" or not (REPO_ROOT / name).is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    corpus = destination.parent / f"corpus-{uuid.uuid4().hex[:8]}.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    write_params(destination, tiny_params(corpus))
    subprocess.run([*GIT, "init", "-q"], cwd=destination, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*GIT, "commit", "-qm", "test copy"], cwd=destination, check=True)
    return destination


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True
    )


def params_of(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def children_of(result: dict) -> list:
    """The MLflow child runs under the parent run of a flow's result."""
    import mlflow

    return mlflow.search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'",
        output_format="list",
    )


@contextmanager
def flow_run_in_repo_copy(folder: Path, flow) -> Iterator[tuple[Path, dict]]:
    """Run `flow` once in a repo copy under `folder`, into a temporary MLflow store and experiment."""
    root = make_repo_copy(folder / "repo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root.parent / 'mlflow' / 'mlflow.db'}")
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"{flow.name}-{uuid.uuid4().hex[:8]}")
        yield root, flow(root=root)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return make_repo_copy(tmp_path / "repo")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch) -> str:
    """A temporary SQLite MLflow store and a unique experiment, through the standard env vars."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"test-{uuid.uuid4().hex[:8]}")
    return uri
