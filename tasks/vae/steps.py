"""The VAE's train and sample steps, as dvc.yaml runs them from the repo root:

python -m tasks.vae.steps train    # one VAE per grid point (latent_dim x beta)
python -m tasks.vae.steps sample   # each point's latent space as images, and a comparison
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks import grid, images, storage
from tasks.image_data import Split, load_split, read_summary
from tasks.images import mosaic
from tasks.params import BlowupParams, EpochChoiceParams, RuntimeParams
from tasks.steps import StepError, run_steps
from tasks.vae.latent import (
    axes_steps,
    class_examples,
    concept_vector,
    decode,
    encode,
    interpolate,
    labelled_latent_grid,
    latent_axes,
    latent_grid,
    nearest_mean_share,
    scatter_plot,
)
from tasks.vae.model import GridPoint, train_point
from tasks.vae.params import VaePaths, VaeSampleParams, load, unknown_concept_class

log = logging.getLogger(__name__)


class VaeError(StepError, ValueError):
    """Bad input for the VAE's steps: concept classes the data does not have, a step run too early."""


def train(root: Path) -> list[dict[str, Any]]:
    """The `train` step: the grid of vae.model and vae.train, on the data step's splits."""
    params, runtime = load(root)
    return train_grid(
        storage.under(root, VaePaths()),
        latent_dims=params.model.latent_dim,
        betas=params.train.beta,
        epochs=params.train.epochs,
        batch_size=params.train.batch_size,
        learning_rate=params.train.learning_rate,
        runtime=runtime,
        choice=params.train,
        blowup=params.train.blowup,
    )


def sample(root: Path) -> list[dict[str, Any]]:
    """The `sample` step: every trained point's latent space, as vae.sample asks."""
    params, runtime = load(root)
    return sample_points(storage.under(root, VaePaths()), params.sample, seed=runtime.seed)


def train_grid(
    paths: VaePaths,
    latent_dims: Sequence[int],
    betas: Sequence[float],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    runtime: RuntimeParams,
    choice: EpochChoiceParams,
    blowup: BlowupParams,
) -> list[dict[str, Any]]:
    """Train one VAE per grid point (latent_dim x beta), each keeping the epoch `choice` names;
    writes models, losses and the points' records, whose `failure` says why a point failed ("" if
    it did not)."""
    train_split, test_split = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    points = grid.expand(GridPoint, latent_dim=latent_dims, beta=betas)
    varying = grid.varying_fields(points)
    for folder in (paths.models, paths.training):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)  # DVC needs every declared output, even if no point kept a model
    log.info(
        "training %d VAE(s) on %d images (%d test), %d epochs",
        len(points),
        len(train_split.images),
        len(test_split.images),
        epochs,
    )
    records = []
    for index, point in enumerate(points):
        name, label = grid.point_name(index), grid.label(point, varying)
        log.info("point %d/%d: %s", index + 1, len(points), label)
        metrics = train_point(
            point,
            train_split,
            test_split,
            epochs,
            batch_size,
            learning_rate,
            paths.models / name,
            paths.training / f"{name}.csv",
            runtime,
            choice,
            blowup,
        )
        failure = (
            diverged_message(label, metrics)
            if metrics["diverged_at_epoch"] or metrics["blown_up_at_epoch"]
            else ""
        )
        if failure:
            log.warning(failure)
        records.append(grid.record(index, point, varying, metrics, failure))
    grid.write_points(paths.training / "points.json", records)
    storage.write_json(paths.train_metrics, {record["name"]: record["metrics"] for record in records})
    return records


def diverged_message(label: str, metrics: dict[str, Any]) -> str:
    kept = (
        f"kept the models of epoch {metrics['kept_epoch']}"
        if metrics["kept_epoch"]
        else "no epoch finished healthy, so no model was kept"
    )
    what = (
        f"loss became NaN in epoch {metrics['diverged_at_epoch']}"
        if metrics["diverged_at_epoch"]
        else f"loss blew up in epoch {metrics['blown_up_at_epoch']}"
    )
    return f"{label}: {what}; {kept} (lower vae.train.learning_rate)"


def sample_points(paths: VaePaths, params: VaeSampleParams, seed: int) -> list[dict[str, Any]]:
    """For every trained point: the latent grid, scatter, reconstructions, interpolation and concept
    vectors as images, plus a labelled comparison of the latent grids."""
    class_names = read_summary(paths.data)["classes"]
    problem = unknown_concept_class(params.concepts, class_names, f"the data in {paths.data}")
    if problem:
        raise VaeError(f"vae.sample.concepts: {problem}")
    if not (paths.training / "points.json").is_file():
        raise VaeError(f"{paths.training / 'points.json'} not found: run the train step first")
    train_split, test_split = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    points = grid.read_points(paths.training / "points.json")
    staging = paths.samples.with_name(f".{paths.samples.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    results, tiles = [], []
    for point in points:
        folder = paths.models / point["name"]
        if not (folder / "decoder.keras").is_file():
            log.warning(
                "%s: no trained model (training diverged in its first epoch); nothing to sample",
                point["label"],
            )
            continue
        keras.utils.set_random_seed(seed)
        encoder = keras.models.load_model(folder / "encoder.keras")
        decoder = keras.models.load_model(folder / "decoder.keras")
        outputs = staging / point["name"]
        metrics = sample_point(
            encoder, decoder, train_split, test_split, class_names, params, point["label"], outputs
        )
        tiles.append((point["label"], images.read_image(outputs / "latent_grid.png")))
        results.append({"name": point["name"], "label": point["label"], "metrics": metrics})
    if tiles:
        images.save_image(images.labelled_grid(tiles, tile_height=420, columns=3), staging / "comparison.png")
    storage.write_json(staging / "samples.json", results)
    if paths.samples.exists():
        shutil.rmtree(paths.samples)
    staging.replace(paths.samples)
    storage.write_json(paths.sample_metrics, {result["name"]: result["metrics"] for result in results})
    return results


def sample_point(
    encoder: keras.Model,
    decoder: keras.Model,
    train: Split,
    test: Split,
    class_names: Sequence[str],
    params: VaeSampleParams,
    label: str,
    outputs: Path,
) -> dict[str, float]:
    """The images one trained VAE is judged by; returns the latent grid's range along each axis
    and the concept-vector metrics."""
    test_means = encode(encoder, test.images)
    axes = latent_axes(test_means, principal=params.grid_axes == "principal")
    steps = axes_steps(axes, test_means, params.grid_span, params.grid_size, params.grid_scale)
    images.save_image(
        labelled_latent_grid(latent_grid(decoder, axes, steps), axes.names, steps),
        outputs / "latent_grid.png",
    )
    title = f"{label}: latent means of the test set"
    scatter_plot(
        axes.coordinates(test_means), test.labels, class_names, axes, title, outputs / "latent_scatter.png"
    )

    chosen = class_examples(test.labels, params.num_reconstructions)
    originals = test.images[chosen].astype(np.float32) / 255.0
    images.save_image(
        mosaic(np.concatenate([originals, decode(decoder, test_means[chosen])]), columns=len(chosen)),
        outputs / "reconstructions.png",
    )
    pair = class_examples(test.labels, 2)  # two classes if there are two; a single test image, twice
    first, second = pair[0], pair[-1]
    between = decode(decoder, interpolate(test_means[first], test_means[second], params.interpolation_steps))
    strip = np.concatenate([test.images[[first]] / 255.0, between, test.images[[second]] / 255.0])
    images.save_image(mosaic(strip, columns=len(strip)), outputs / "interpolation.png")

    metrics = grid_range_metrics(steps)
    if params.concepts:
        train_means = encode(encoder, train.images)
    for index, concept in enumerate(params.concepts):
        source, target = class_names.index(concept.source), class_names.index(concept.target)
        if not (np.any(train.labels == source) and np.any(train.labels == target)):
            log.warning(
                "concept %s -> %s: a group has no training images; skipped", concept.source, concept.target
            )
            continue
        vector = concept_vector(train_means, train.labels, source, target)
        examples = np.flatnonzero(test.labels == source)[: params.concept_images]
        if not len(examples):
            log.warning(
                "concept %s -> %s: no test images of %s; skipped",
                concept.source,
                concept.target,
                concept.source,
            )
            continue
        source_mean = train.images[train.labels == source].mean(axis=0) / 255.0
        target_mean = train.images[train.labels == target].mean(axis=0) / 255.0
        rows = [test.images[examples] / 255.0]
        for strength in params.concept_strengths:
            shifted = decode(decoder, test_means[examples] + strength * vector)
            rows.append(shifted)
            metrics[f"concept_{index:02d}/target_share/strength_{strength:g}"] = nearest_mean_share(
                shifted, source_mean, target_mean
            )
        # rows: originals, then one row per strength; shown as one column per strength.
        columns = np.stack(rows, axis=1).reshape(-1, *test.images.shape[1:])
        images.save_image(mosaic(columns, columns=len(rows)), outputs / f"concept_{index:02d}.png")
        metrics[f"concept_{index:02d}/vector_norm"] = float(np.linalg.norm(vector))
    return metrics


def grid_range_metrics(steps: Sequence[np.ndarray]) -> dict[str, float]:
    """The latent grid's first and last step along each axis: grid/axis_0_low, grid/axis_0_high..."""
    return {
        f"grid/axis_{axis}_{end}": float(axis_steps[index])
        for axis, axis_steps in enumerate(steps)
        for end, index in (("low", 0), ("high", -1))
    }


if __name__ == "__main__":
    sys.exit(run_steps({"train": train, "sample": sample}, __doc__))
