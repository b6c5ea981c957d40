"""Generation from the image generators' pyfunc class (VAE decoder, GAN generator): requests for
images by number and seed or by latent points, bad requests, and which GAN generator is served.
(The text champion is served over HTTP from the team's MLflow server in tests/team.)"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks import champion, tracking
from tasks.gan.serving import best_generator
from tasks.image_serving import INPUT_EXAMPLE, SIGNATURE, LatentImages

pytestmark = pytest.mark.slow


@pytest.fixture
def decoder_model(tmp_path: Path, mlflow_store: str) -> str:
    """A tiny untrained decoder (2 latent dimensions -> 8 x 8 grey images) logged as the VAE's pyfunc
    model; returns its model URI."""
    decoder = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(64, activation="sigmoid"), keras.layers.Reshape((8, 8, 1))]
    )
    decoder.save(tmp_path / "decoder.keras")
    experiment_id = tracking.setup_experiment(mlflow_store, os.environ["MLFLOW_EXPERIMENT_NAME"])
    run_id = mlflow.MlflowClient().create_run(experiment_id).info.run_id
    model, _ = champion.log_pyfunc_model(
        run_id,
        LatentImages(),
        {"model": tmp_path / "decoder.keras"},
        signature=SIGNATURE,
        input_example=INPUT_EXAMPLE,
    )
    return f"models:/{model.model_id}"


def test_image_generator_answers_num_images_and_seed_or_latent_points(decoder_model):
    model = mlflow.pyfunc.load_model(decoder_model)
    drawn = model.predict(pd.DataFrame({"num_images": [3], "seed": [7]}))
    assert list(drawn.columns) == ["image", "latent"] and len(drawn) == 3
    image = Image.open(io.BytesIO(base64.b64decode(drawn["image"][0])))
    assert image.format == "PNG" and image.size == (8, 8) and image.mode == "L"
    again = model.predict(pd.DataFrame({"num_images": [3], "seed": [7]}))
    assert list(again["image"]) == list(drawn["image"])  # same seed, same images

    points = model.predict(pd.DataFrame({"latent": [drawn["latent"][1], [0.0, 0.0]]}))
    assert points["image"][0] == drawn["image"][1]  # the latent point each image came from
    assert len(points) == 2


@pytest.mark.parametrize(
    ("request_rows", "message"),
    [
        ({"latent": [[0.0, 1.0, 2.0]]}, "latent must be 2 finite numbers"),
        ({"num_images": [0], "seed": [1]}, "num_images must be from 1 to 256"),
        ({"num_images": [200, 100]}, "asks for 300 images; at most 256"),
    ],
)
def test_image_generator_rejects_bad_requests_with_a_message(decoder_model, request_rows, message):
    model = mlflow.pyfunc.load_model(decoder_model)
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        model.predict(pd.DataFrame(request_rows))


def test_the_gan_serves_its_better_generator():
    assert best_generator({"frechet_distance": 30.0, "ema_frechet_distance": 20.0}) == ("ema_generator", 20.0)
    assert best_generator({"frechet_distance": 30.0, "ema_frechet_distance": 40.0}) == ("generator", 30.0)
    assert best_generator({"frechet_distance": 30.0}) == ("generator", 30.0)
    stem, score = best_generator({"frechet_distance": float("nan")})
    assert stem == "generator" and np.isnan(score)
