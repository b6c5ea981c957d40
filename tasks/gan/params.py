"""The GAN's params (the `gan` section of params.yaml) and where its steps read and write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydantic

from tasks.image_data import ImageDataParams
from tasks.params import EpochChoiceParams, Params, RuntimeParams, load_params, parse_section
from tasks.steps import StepError

TECHNIQUE = "gan"

Rate = pydantic.confloat(ge=0.0, lt=1.0)


class GanError(StepError, ValueError):
    """Bad input for the GAN: data that does not fit the model, or a step run out of order."""


class GanDataParams(ImageDataParams):
    max_images: int = pydantic.Field(ge=0)  # use only the first N training images; 0 = all


class GanModelParams(Params):
    latent_dim: int = pydantic.Field(ge=1)
    width: float = pydantic.Field(gt=0.0, le=4.0)  # multiplies the generator's filter counts (1 = the book's)
    discriminator_width: float = pydantic.Field(gt=0.0, le=4.0)  # the same, for the discriminator's alone
    dropout: list[Rate] = pydantic.Field(min_length=1)  # discriminator dropout; one grid axis


class InstabilityParams(Params):
    d_loss_below: float = pydantic.Field(ge=0.0, allow_inf_nan=False)  # discriminator "wins"...
    patience: int = pydantic.Field(ge=1)  # ...while the generator loss rises, this many epochs
    action: Literal["warn", "stop"]


class GanTrainParams(EpochChoiceParams):  # keep, patience: on each generator's Frechet distance
    epochs: int = pydantic.Field(ge=1)
    batch_size: int = pydantic.Field(ge=1)
    learning_rate: list[pydantic.PositiveFloat] = pydantic.Field(min_length=1)  # both Adams; grid axis
    adam_beta_1: Rate  # both Adams' first-moment decay: 0.9 Keras's default, 0.5 DCGAN's
    label_noise: list[pydantic.NonNegativeFloat] = pydantic.Field(min_length=1)  # grid axis
    ema_decay: Rate  # moving average of the generator's weights; 0 = off
    grid_images: int = pydantic.Field(ge=1)  # images from fixed latent vectors, every epoch
    instability: InstabilityParams


class GanScoreParams(Params):
    features: Literal["classifier", "inception_v3"]  # whose features the Frechet distance compares
    classifier_epochs: int = pydantic.Field(ge=1)
    num_images: int = pydantic.Field(ge=2)  # generated and real images per Frechet distance
    confidence: float = pydantic.Field(gt=0.0, le=1.0)  # a "confident" classification: top softmax >= this


class GanParams(Params):
    data: GanDataParams
    model: GanModelParams
    train: GanTrainParams
    score: GanScoreParams


@dataclass(frozen=True)
class GanPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    data: Path = Path("data/gan")  # train.npz, test.npz, classes.json
    classifier: Path = Path("models/gan_classifier")  # classifier.keras, metrics.json
    models: Path = Path("models/gan")  # point_NN/generator.keras (+ ema_generator.keras)
    training: Path = Path("outputs/gan/training")  # points.json, comparison.png, point_NN/...
    train_metrics: Path = Path("outputs/gan/train_metrics.json")


def load(root: Path) -> tuple[GanParams, RuntimeParams]:
    """The `gan` and `runtime` sections of `root`/params.yaml, validated."""
    params = load_params(root)
    return parse_section(params, TECHNIQUE, GanParams), parse_section(params, "runtime", RuntimeParams)
