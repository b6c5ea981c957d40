"""DeepDream's params section (`deepdream` in params.yaml) and where its steps read and write."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydantic

from tasks.params import BACKBONES, Params, RuntimeParams, load_params, parse_section

SECTION = "deepdream"


class RandomSettingsParams(Params):
    count: int = pydantic.Field(ge=0)  # 0 = none
    pool: list[str]
    layers_per_setting: int = pydantic.Field(ge=1)
    seed: int = pydantic.Field(ge=0)


class DeepDreamParams(Params):
    image: str = pydantic.Field(min_length=1)
    image_sha256: str
    max_size: int = pydantic.Field(ge=32)
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    step: float = pydantic.Field(gt=0.0, allow_inf_nan=False)
    num_octave: int = pydantic.Field(ge=1)
    octave_scale: float = pydantic.Field(ge=1.0, allow_inf_nan=False)
    iterations: int = pydantic.Field(ge=1)
    max_loss: float = pydantic.Field(ge=0.0, allow_inf_nan=False)  # 0 = no cap
    tile_size: int = pydantic.Field(ge=0)  # 0 = the whole image at once, as in the book
    layer_settings: list[dict[str, float]]
    random_settings: RandomSettingsParams

    @pydantic.model_validator(mode="after")
    def _some_setting(self) -> DeepDreamParams:
        if not self.layer_settings and not self.random_settings.count:
            raise ValueError("give at least one layer setting or random_settings.count > 0")
        for setting in self.layer_settings:
            if not setting or not all(math.isfinite(weight) for weight in setting.values()):
                raise ValueError(f"a layer setting needs layers with finite weights, got {setting}")
        if (
            self.random_settings.count
            and len(self.random_settings.pool) < self.random_settings.layers_per_setting
        ):
            raise ValueError("random_settings.pool has fewer layers than layers_per_setting")
        return self


@dataclass(frozen=True)
class DeepDreamPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    image: Path = Path("data/deepdream/image.png")
    dreams: Path = Path("outputs/deepdream/dreams")  # setting_NN.png, grid.png, results.json
    metrics: Path = Path("outputs/deepdream/metrics.json")


def load(root: Path) -> tuple[DeepDreamParams, RuntimeParams]:
    """The deepdream and runtime sections of `root`/params.yaml, validated."""
    params = load_params(root)
    return parse_section(params, SECTION, DeepDreamParams), parse_section(params, "runtime", RuntimeParams)
