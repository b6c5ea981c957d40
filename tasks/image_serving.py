"""A latent-variable image generator as an MLflow pyfunc model, for the VAE's decoder and the GAN's
generator (both map standard-normal latent vectors to images in [0, 1]): a number of images and a
seed, or latent points, in; PNG images out. `mlflow models serve` answers

    {"dataframe_records": [{"num_images": 4, "seed": 7}]}
    {"dataframe_records": [{"latent": [0.0, 1.5]}, {"latent": [-1.0, 0.5]}]}

with {"predictions": [{"image": "<base64 PNG>", "latent": [...]}, ...]}: one row per image, with the
latent point it was made from. Base64 PNG because JSON has no bytes, and a compressed image is
several times smaller than nested lists of its pixels. No DVC stage imports this module.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import keras
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array
from PIL import Image

MAX_IMAGES = 256  # per request: bounds its time and the size of the answer

# One request is either rows of num_images (+ seed) or rows of latent points: MLflow cannot mix
# integer columns with missing values.
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(DataType.long, "num_images", required=False),  # standard-normal latent points
            ColSpec(DataType.long, "seed", required=False),  # of those points; none = random
            ColSpec(Array(DataType.double), "latent", required=False),  # or one image per given point
        ]
    ),
    outputs=Schema([ColSpec(DataType.string, "image"), ColSpec(Array(DataType.double), "latent")]),
)
INPUT_EXAMPLE = pd.DataFrame({"num_images": [2], "seed": [0]})


class LatentImages(PythonModel):
    """Artifact `model`: a Keras model from (n, latent_dim) latent points to (n, h, w, c) images in
    [0, 1] (the VAE's decoder, the GAN's generator)."""

    def load_context(self, context) -> None:
        self.model = keras.models.load_model(context.artifacts["model"])
        self.latent_dim = int(self.model.input_shape[-1])

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        latents = requested_latents(model_input.to_dict("records"), self.latent_dim)
        images = np.concatenate(
            [
                self.model(latents[start : start + 64], training=False).numpy()
                for start in range(0, len(latents), 64)
            ]
        )
        return pd.DataFrame({"image": [png_base64(image) for image in images], "latent": latents.tolist()})


def standard_normal(num_images: int, latent_dim: int, seed: int | None) -> np.ndarray:
    """(num_images, latent_dim) float32 latent points; the GAN's training grids use the same draw
    (tasks.gan.model.fixed_latents), so its grid seed gives its grid images."""
    return np.random.default_rng(seed).standard_normal((num_images, latent_dim)).astype(np.float32)


def requested_latents(rows: list[dict[str, Any]], latent_dim: int) -> np.ndarray:
    """The latent points of a request's rows, or an `MlflowException` (HTTP 400) saying what to fix."""
    latents = []
    for number, row in enumerate(rows, start=1):
        latent, num_images, seed = row.get("latent"), row.get("num_images"), row.get("seed")
        if latent is not None and not (isinstance(latent, float) and math.isnan(latent)):
            point = np.asarray(latent, np.float32).reshape(-1)
            if point.shape != (latent_dim,) or not np.all(np.isfinite(point)):
                raise invalid(f"row {number}: latent must be {latent_dim} finite numbers, got {latent!r}")
            latents.append(point[None])
        elif num_images is not None:
            if not 1 <= num_images <= MAX_IMAGES:
                raise invalid(f"row {number}: num_images must be from 1 to {MAX_IMAGES}, got {num_images!r}")
            if seed is not None and seed < 0:
                raise invalid(f"row {number}: seed must be >= 0, got {seed!r}")
            latents.append(standard_normal(int(num_images), latent_dim, None if seed is None else int(seed)))
        else:
            raise invalid(f"row {number}: give num_images (and a seed) or a latent point, got {row!r}")
    if not latents:
        raise invalid("the request has no rows")
    stacked = np.concatenate(latents)
    if len(stacked) > MAX_IMAGES:
        raise invalid(f"the request asks for {len(stacked)} images; at most {MAX_IMAGES} at a time")
    return stacked


def invalid(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def png_base64(image: np.ndarray) -> str:
    """(h, w, c) floats in [0, 1] -> a base64 PNG, grey for one channel."""
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
