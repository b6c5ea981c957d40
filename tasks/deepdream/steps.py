"""DeepDream's dream step: `python -m tasks.deepdream.steps dream` (from the repo root, as dvc.yaml
runs it) dreams once per layer setting, given or drawn at random, and writes each dream, its losses
and a labelled comparison grid."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks import images, storage
from tasks.backbones import from_unit_to_pixels, load_backbone
from tasks.deepdream import model
from tasks.deepdream.model import LayerSetting
from tasks.deepdream.params import DeepDreamParams, DeepDreamPaths, load
from tasks.params import RuntimeParams
from tasks.runtime import configure_runtime
from tasks.steps import run_steps

log = logging.getLogger(__name__)

BOOK_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 2.5)


# --- Layer settings: one dream (one MLflow child run) each ---------------------------------


def setting_name(setting: LayerSetting) -> str:
    return ",".join(f"{layer}={weight:g}" for layer, weight in setting.items())


def draw_random_settings(
    pool: Sequence[str], count: int, layers_per_setting: int, seed: int
) -> list[LayerSetting]:
    """The book's suggestion: explore random layers, each weighted in [0.5, 2.5] (steps of 0.5)."""
    rng = np.random.default_rng(seed)
    settings = []
    for _ in range(count):
        layers = sorted(rng.choice(pool, size=layers_per_setting, replace=False), key=list(pool).index)
        settings.append({str(layer): float(rng.choice(BOOK_WEIGHTS)) for layer in layers})
    return settings


def all_settings(params: DeepDreamParams) -> list[LayerSetting]:
    """The given layer settings, then those drawn at random."""
    random = params.random_settings
    return [dict(s) for s in params.layer_settings] + draw_random_settings(
        random.pool, random.count, random.layers_per_setting, random.seed
    )


# --- The step -------------------------------------------------------------------------------


def dream_settings(
    paths: DeepDreamPaths,
    settings: Sequence[LayerSetting],
    *,
    backbone: str,
    tile_size: int,
    num_octave: int,
    octave_scale: float,
    iterations: int,
    step: float,
    max_loss: float,
    runtime: RuntimeParams,
    weights: str = "pretrained",
) -> list[dict[str, Any]]:
    """Dream once per layer setting; writes each dream, its losses, and a labelled grid.

    Every check (octave and tile sizes, layer names) runs before the first dream is written.
    """
    configure_runtime(runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute)
    original_pixels = images.read_image(paths.image)
    shapes = model.octave_shapes(original_pixels.shape[:2], num_octave, octave_scale)
    model.check_octaves(shapes, backbone, tile_size)
    network = load_backbone(backbone, weights)
    for setting in settings:  # every unknown layer is reported before any dreaming starts
        network.check_layers(setting)

    original = original_pixels / 127.5 - 1.0
    results, tiles = [], [("original", original_pixels)]
    paths.dreams.mkdir(parents=True, exist_ok=True)
    for index, setting in enumerate(settings):
        name = setting_name(setting)
        log.info("setting %d/%d: %s", index + 1, len(settings), name)
        started = time.perf_counter()
        dreamed, losses = model.dream(
            original,
            model.make_loss_and_grads(
                network.feature_extractor(list(setting)),
                setting,
                runtime.jit_compile,
                crop_border=not tile_size,
            ),
            num_octave,
            octave_scale,
            iterations,
            step,
            max_loss,
            tile_size,
            seed=runtime.seed + index,
        )
        seconds = time.perf_counter() - started
        pixels = np.clip(from_unit_to_pixels(dreamed).numpy(), 0, 255)
        file_name = f"setting_{index:02d}.png"
        images.save_image(pixels, paths.dreams / file_name)
        tiles.append((name, pixels))
        results.append(
            {"name": name, "setting": setting, "image": file_name, "losses": losses, "seconds": seconds}
        )
    images.save_image(images.labelled_grid(tiles), paths.dreams / "grid.png")
    storage.write_json(paths.dreams / "results.json", {"backbone": network.name, "settings": results})
    storage.write_json(paths.metrics, summarize(results, num_octave))
    return results


def summarize(results: Sequence[dict[str, Any]], num_octave: int) -> dict[str, Any]:
    """Per setting, keyed by its image ("setting_00"): two settings may share a name."""
    metrics: dict[str, Any] = {}
    for result in results:
        losses = result["losses"]
        metrics[Path(result["image"]).stem] = {
            "first_loss": losses[0]["loss"],
            "final_loss": losses[-1]["loss"],
            "steps": len(losses),
            "mean_seconds_per_octave": result["seconds"] / num_octave,
        }
    return metrics


def dream_with(
    paths: DeepDreamPaths, params: DeepDreamParams, runtime: RuntimeParams, weights: str = "pretrained"
) -> list[dict[str, Any]]:
    """`dream_settings` with the fields of a params section, as the `dream` step runs it."""
    knobs = params.model_dump(
        include={"backbone", "tile_size", "num_octave", "octave_scale", "iterations", "step", "max_loss"}
    )
    return dream_settings(paths, all_settings(params), **knobs, runtime=runtime, weights=weights)


def dream(root: Path) -> None:
    """The `dream` step."""
    params, runtime = load(root)
    dream_with(storage.under(root, DeepDreamPaths()), params, runtime)

if __name__ == "__main__":
    sys.exit(run_steps({"dream": dream}, __doc__))
