"""Style transfer's params section (`style_transfer` in params.yaml), the comparison grid's point,
and where its steps read and write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydantic

from tasks.params import BACKBONES, Params, RuntimeParams, load_params, parse_section

SECTION = "style_transfer"
OPTIMIZERS = ("sgd", "adam", "lbfgs")
# The size is bounded where it enters, so a huge one fails in one line instead of as a TensorFlow
# out-of-memory error: `height` here, when params are validated (before any stage runs), and
# width x height of each image in the images step (a wide panorama at an allowed height).
MAX_HEIGHT = 2048  # pixels; the book uses 400
MAX_PIXELS = 2048 * 4096  # per image at the shared height


class StyleImageParams(Params):
    image: str = pydantic.Field(min_length=1)  # URL, local path or bundled:<name>
    sha256: str = ""  # "" = not checked
    weight: float = pydantic.Field(default=1.0, ge=0.0, allow_inf_nan=False)  # share in the style blend


class SgdParams(Params):
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)
    decay_steps: int = pydantic.Field(ge=1)
    decay_rate: float = pydantic.Field(gt=0.0, le=1.0)


class AdamParams(Params):
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)


class LbfgsParams(Params):
    history: int = pydantic.Field(ge=1)  # corrections kept (SciPy's maxcor)


Weight = pydantic.NonNegativeFloat


class StyleTransferParams(Params):
    content_image: str = pydantic.Field(min_length=1)
    content_sha256: str
    style_images: list[StyleImageParams] = pydantic.Field(min_length=1)
    height: int = pydantic.Field(ge=32)
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    content_layer: str = pydantic.Field(min_length=1)
    style_layers: list[list[str]] = pydantic.Field(min_length=1)
    content_weight: list[Weight] = pydantic.Field(min_length=1)
    style_weight: list[Weight] = pydantic.Field(min_length=1)
    total_variation_weight: list[Weight] = pydantic.Field(min_length=1)
    optimizer: list[Literal[OPTIMIZERS]] = pydantic.Field(min_length=1)  # type: ignore[valid-type]
    iterations: int = pydantic.Field(ge=1)
    sgd: SgdParams
    adam: AdamParams
    lbfgs: LbfgsParams
    num_scales: int = pydantic.Field(ge=1)
    scale_ratio: float = pydantic.Field(ge=1.0, allow_inf_nan=False)
    preserve_color: bool
    snapshot_every: int = pydantic.Field(ge=0)

    @pydantic.field_validator("height")
    @classmethod
    def _bounded_height(cls, height: int) -> int:
        if height > MAX_HEIGHT:
            raise ValueError(
                f"must be at most {MAX_HEIGHT} pixels: the convnet's activations and their gradients "
                "grow with the pixel count and would not fit in memory (the book uses 400)"
            )
        return height

    @pydantic.model_validator(mode="after")
    def _usable(self) -> StyleTransferParams:
        if any(not layers for layers in self.style_layers):
            raise ValueError("every entry of style_layers needs at least one layer")
        if not sum(style.weight for style in self.style_images):
            raise ValueError("the style_images weights are all 0: give at least one a weight > 0")
        if (
            not any(self.content_weight)
            and not any(self.style_weight)
            and not any(self.total_variation_weight)
        ):
            raise ValueError(
                "content_weight, style_weight and total_variation_weight are 0 everywhere: nothing to optimise"
            )
        return self


@dataclass(frozen=True)
class GridPoint:
    """One run of the comparison: its loss weights, style layers and optimiser. The params lists
    expand into every combination of these fields (tasks.grid.expand, in this order)."""

    content_weight: float
    style_weight: float
    total_variation_weight: float
    style_layers: tuple[str, ...]
    optimizer: str


@dataclass(frozen=True)
class StyleTransferPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    inputs: Path = Path("data/style_transfer")  # content.png, style_00.png, ...
    results: Path = Path("outputs/style_transfer/results")  # grid.png, results.json, point_NN/
    metrics: Path = Path("outputs/style_transfer/metrics.json")

    @property
    def content(self) -> Path:
        return self.inputs / "content.png"

    def style(self, index: int) -> Path:
        return self.inputs / f"style_{index:02d}.png"


def load(root: Path) -> tuple[StyleTransferParams, RuntimeParams]:
    """The style_transfer and runtime sections of `root`/params.yaml, validated."""
    params = load_params(root)
    section = parse_section(params, SECTION, StyleTransferParams)
    return section, parse_section(params, "runtime", RuntimeParams)
