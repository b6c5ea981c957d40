"""The VAE's params (section `vae` of params.yaml) and where its steps read and write.

Concept classes are checked here against the classes of a Keras dataset, so validating params.yaml
catches a misspelt class before anything runs; a folder's classes are known only once it is read,
so the sample step checks those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import pydantic_core

from tasks.image_data import CLASS_NAMES, ImageDataParams
from tasks.params import BlowupParams, EpochChoiceParams, Params, RuntimeParams, load_params, parse_section

# YAML reads `source: 4` as a number; class names are strings ("4" is an MNIST digit's name).
ClassName = Annotated[
    str, pydantic.BeforeValidator(lambda value: str(value) if isinstance(value, int) else value)
]
# Where the latent grid's steps lie along each axis (tasks/vae/latent.py grid_steps).
GridSpan = Literal["data", "normal", "fixed"]


class VaeDataParams(ImageDataParams):
    max_train_images: int = pydantic.Field(ge=0)  # 0 = all
    max_test_images: int = pydantic.Field(ge=0)


class VaeModelParams(Params):
    latent_dim: list[pydantic.PositiveInt] = pydantic.Field(min_length=1)  # one grid axis


class VaeTrainParams(EpochChoiceParams):  # keep, patience: on the test loss
    beta: list[pydantic.NonNegativeFloat] = pydantic.Field(min_length=1)  # KL weight; one grid axis
    epochs: int = pydantic.Field(ge=1)
    batch_size: int = pydantic.Field(ge=1)
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)
    blowup: BlowupParams


class ConceptParams(Params):
    source: ClassName = pydantic.Field(min_length=1)
    target: ClassName = pydantic.Field(min_length=1)

    @pydantic.model_validator(mode="after")
    def _distinct(self) -> ConceptParams:
        if self.source == self.target:
            raise ValueError(f"source and target are both {self.source!r}: a concept needs two groups")
        return self


class VaeSampleParams(Params):
    grid_size: int = pydantic.Field(ge=2)  # the book's 30 x 30
    grid_axes: Literal["latent", "principal"]  # latent: the book's plane (latent_dim <= 2)
    grid_span: GridSpan  # data: the test means' quantiles; normal: the Keras blog's; fixed: the book's
    grid_scale: float = pydantic.Field(gt=0.0, allow_inf_nan=False)  # fixed: half-width; normal: multiplier
    num_reconstructions: int = pydantic.Field(ge=1)
    interpolation_steps: int = pydantic.Field(ge=2)
    concepts: list[ConceptParams]
    concept_strengths: list[float] = pydantic.Field(min_length=1)
    concept_images: int = pydantic.Field(ge=1)


class VaeParams(Params):
    data: VaeDataParams
    model: VaeModelParams
    train: VaeTrainParams
    sample: VaeSampleParams

    @pydantic.model_validator(mode="after")
    def _concepts_of_the_dataset(self) -> VaeParams:
        if self.data.dataset not in CLASS_NAMES:
            return self
        concepts = self.sample.concepts
        problem = unknown_concept_class(concepts, CLASS_NAMES[self.data.dataset], self.data.dataset)
        if problem:
            # Located at sample.concepts, so the error names that key as every params error does.
            error = pydantic_core.PydanticCustomError("concept_class", "{problem}", {"problem": problem})
            raise pydantic.ValidationError.from_exception_data(
                type(self).__name__,
                [
                    pydantic_core.InitErrorDetails(
                        type=error,
                        loc=("sample", "concepts"),
                        input=[concept.model_dump() for concept in concepts],
                    )
                ],
            )
        return self


def unknown_concept_class(concepts: Sequence[ConceptParams], class_names: Sequence[str], where: str) -> str:
    """What is wrong with the first concept class that is not in `class_names` ("" if none is)."""
    for concept in concepts:
        for name in (concept.source, concept.target):
            if name not in class_names:
                return f"class {name!r} is not a class of {where} (classes: {', '.join(class_names)})"
    return ""


@dataclass(frozen=True)
class VaePaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    data: Path = Path("data/vae")  # train.npz, test.npz (uint8 images, labels), classes.json
    models: Path = Path("models/vae")  # point_NN/encoder.keras, point_NN/decoder.keras
    training: Path = Path("outputs/vae/training")  # points.json, point_NN.csv (losses per epoch)
    train_metrics: Path = Path("outputs/vae/train_metrics.json")
    samples: Path = Path("outputs/vae/samples")  # point_NN/*.png, comparison.png, samples.json
    sample_metrics: Path = Path("outputs/vae/sample_metrics.json")


def load(root: Path) -> tuple[VaeParams, RuntimeParams]:
    """The `vae` and `runtime` sections of root/params.yaml, validated."""
    params = load_params(root)
    return parse_section(params, "vae", VaeParams), parse_section(params, "runtime", RuntimeParams)
