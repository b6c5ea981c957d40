"""Style transfer's stylize step: `python -m tasks.style_transfer.steps stylize` (from the repo root,
as dvc.yaml runs it) stylises the content once per point of the comparison grid (lists of loss
weights, style layer sets and optimisers expand into every combination) and writes each image, its
losses per step, its snapshots and a labelled comparison grid."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks import grid, images, storage
from tasks.backbones import load_backbone
from tasks.params import RuntimeParams
from tasks.runtime import configure_runtime
from tasks.steps import run_steps
from tasks.style_transfer import model
from tasks.style_transfer.optimizers import LossHistory
from tasks.style_transfer.params import (
    AdamParams,
    GridPoint,
    LbfgsParams,
    SgdParams,
    StyleImageParams,
    StyleTransferParams,
    StyleTransferPaths,
    load,
)

log = logging.getLogger(__name__)

# What labels a grid of one point (nothing varies): its weights and optimiser.
SINGLE_POINT_LABEL = ("content_weight", "style_weight", "total_variation_weight", "optimizer")


def grid_points(params: StyleTransferParams) -> list[GridPoint]:
    """The product of every list in params, skipping points whose weights are all zero."""
    points = grid.expand(
        GridPoint,
        content_weight=params.content_weight,
        style_weight=params.style_weight,
        total_variation_weight=params.total_variation_weight,
        style_layers=[tuple(layers) for layers in params.style_layers],
        optimizer=params.optimizer,
    )
    return [
        point
        for point in points
        if point.content_weight or point.style_weight or point.total_variation_weight
    ]


def point_metrics(history: LossHistory, seconds: float) -> dict[str, float]:
    """A point's metrics (metrics.json, its MLflow run): the losses of the image it returned, the
    best loss it saw, and its time."""
    return {
        **{f"final_{term}": history.final[term] for term in model.LOSS_TERMS},
        "best_loss": min([record["loss"] for record in history.records] + [history.final["loss"]]),
        "seconds": seconds,
        "seconds_per_step": seconds / len(history.records),
    }


def stylize_grid(
    paths: StyleTransferPaths,
    points: Sequence[GridPoint],
    *,
    style_images: Sequence[StyleImageParams],
    backbone: str,
    content_layer: str,
    iterations: int,
    num_scales: int,
    scale_ratio: float,
    preserve_color: bool,
    snapshot_every: int,
    sgd: SgdParams,
    adam: AdamParams,
    lbfgs: LbfgsParams,
    runtime: RuntimeParams,
    weights: str = "pretrained",
) -> list[dict[str, Any]]:
    """One stylised image per grid point, with its losses and snapshots, plus a labelled grid.

    Returns the points' records (tasks.grid.record, plus the number of steps). Every check runs
    before the first point; results are written to a sibling folder and moved into place at the
    end, so a failure leaves the previous results (or none), never a partial set.
    """
    configure_runtime(runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute)
    content = images.read_image(paths.content)
    styles = [images.read_image(paths.style(index)) for index in range(len(style_images))]
    heights = model.scale_heights(content.shape[0], num_scales, scale_ratio)
    model.check_sizes(content.shape, heights, backbone)
    for index, (style, source) in enumerate(zip(styles, style_images)):
        model.check_sizes(style.shape, heights, backbone, f"style image {index} ({source.image})")
    network = load_backbone(backbone, weights)
    style_layers = sorted({layer for point in points for layer in point.style_layers})
    network.check_layers([content_layer, *style_layers])
    varying = grid.varying_fields(points) or SINGLE_POINT_LABEL

    staging = paths.results.with_name(f".{paths.results.name}.partial")
    _remove(staging)
    records, tiles = [], [("content", content)] + [(f"style {i}", style) for i, style in enumerate(styles)]
    for index, point in enumerate(points):
        label = grid.label(point, varying)
        log.info("point %d/%d: %s", index + 1, len(points), label)
        started = time.perf_counter()
        final, history = model.stylize(
            content,
            styles,
            [style.weight for style in style_images],
            network,
            content_layer,
            point,
            iterations,
            heights,
            preserve_color,
            snapshot_every,
            sgd,
            adam,
            lbfgs,
            runtime.jit_compile,
        )
        record = grid.record(index, point, varying, point_metrics(history, time.perf_counter() - started))
        folder = staging / record["name"]
        images.save_image(final, folder / "final.png")
        for step, snapshot in history.snapshots:
            images.save_image(snapshot, folder / "snapshots" / f"step_{step:05d}.png")
        storage.write_rows(folder / "losses.csv", history.records)
        tiles.append((label, final))
        records.append({**record, "steps": len(history.records)})
    images.save_image(images.labelled_grid(tiles), staging / "grid.png")
    settings = {
        "backbone": network.name,
        "content_layer": content_layer,
        "heights": heights,
        "iterations": iterations,
        "preserve_color": preserve_color,
    }
    storage.write_json(staging / "results.json", {"settings": settings, "points": records})
    _remove(paths.results)
    staging.replace(paths.results)
    storage.write_json(paths.metrics, {record["name"]: record["metrics"] for record in records})
    return records


def _remove(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)


def stylize_with(
    paths: StyleTransferPaths, params: StyleTransferParams, runtime: RuntimeParams, weights: str = "pretrained"
) -> list[dict[str, Any]]:
    """`stylize_grid` with the fields of a params section, as the `stylize` step runs it."""
    return stylize_grid(
        paths,
        grid_points(params),
        style_images=params.style_images,
        backbone=params.backbone,
        content_layer=params.content_layer,
        iterations=params.iterations,
        num_scales=params.num_scales,
        scale_ratio=params.scale_ratio,
        preserve_color=params.preserve_color,
        snapshot_every=params.snapshot_every,
        sgd=params.sgd,
        adam=params.adam,
        lbfgs=params.lbfgs,
        runtime=runtime,
        weights=weights,
    )


def stylize(root: Path) -> None:
    """The `stylize` step."""
    params, runtime = load(root)
    stylize_with(storage.under(root, StyleTransferPaths()), params, runtime)

if __name__ == "__main__":
    sys.exit(run_steps({"stylize": stylize}, __doc__))
