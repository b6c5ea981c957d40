"""The shared comparison grid and the NaN guard every trained technique uses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import pytest

from tasks import grid, images
from tasks.kept_epoch import kept_model_line
from tasks.training import NanGuard, all_finite


@dataclass(frozen=True)
class Point:
    learning_rate: float
    optimizer: str


def test_expand_is_every_combination_first_field_slowest():
    points = grid.expand(Point, optimizer=["adam", "lbfgs"], learning_rate=[0.1, 0.01])

    assert points == [Point(0.1, "adam"), Point(0.1, "lbfgs"), Point(0.01, "adam"), Point(0.01, "lbfgs")]


def test_labels_name_only_what_varies():
    points = grid.expand(Point, learning_rate=[0.1, 0.01], optimizer=["adam"])
    varying = grid.varying_fields(points)

    assert varying == ["learning_rate"]
    assert [grid.label(point, varying) for point in points] == ["learning_rate=0.1", "learning_rate=0.01"]
    single = grid.expand(Point, learning_rate=[1e-4], optimizer=["adam"])
    assert grid.label(single[0], grid.varying_fields(single)) == "learning_rate=0.0001, optimizer=adam"


def test_records_carry_the_failure_decided_once(tmp_path):
    points = grid.expand(Point, learning_rate=[0.1, 10.0], optimizer=["adam"])
    varying = grid.varying_fields(points)
    records = [
        grid.record(0, points[0], varying, {"loss": 1.0}),
        grid.record(1, points[1], varying, {"loss": math.nan}, failure="learning_rate=10: loss became NaN"),
    ]
    grid.write_points(tmp_path / "points.json", records)

    read = grid.read_points(tmp_path / "points.json")
    assert [entry["name"] for entry in read] == ["point_00", "point_01"]
    assert read[1]["point"] == {"learning_rate": 10.0, "optimizer": "adam"}
    assert grid.failures(read) == ["learning_rate=10: loss became NaN"]


def test_all_finite():
    assert all_finite({"loss": 1.0, "val_loss": 2.0}) and all_finite(None)
    assert not all_finite({"loss": 1.0, "val_loss": math.inf})


def test_nan_guard_stops_at_the_bad_batch_and_keeps_the_last_good_epoch():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = np.ones((64, 1), np.float32)
    targets = np.ones((64, 1), np.float32)
    saved = []

    class PoisonAfter(keras.callbacks.Callback):  # epoch 3's second batch turns the weights to NaN
        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 2 and batch == 1:
                self.model.layers[0].kernel.assign(np.full((1, 1), np.nan, np.float32))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    guard = NanGuard(saved.append)
    batches = []
    model.fit(
        x,
        targets,
        batch_size=8,
        epochs=5,
        verbose=0,
        callbacks=[
            PoisonAfter(),
            guard,
            keras.callbacks.LambdaCallback(on_batch_end=lambda batch, logs: batches.append(batch)),
        ],
    )

    assert saved == [1, 2]
    assert guard.last_good_epoch == 2 and guard.diverged_at_epoch == 3
    assert len(batches) == 8 + 8 + 2, "training went on after the NaN batch"


def kept_metrics(kept, best, final, **endings) -> dict[str, float]:
    losses = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.8}
    return {
        **{f"{which}_epoch": epoch for which, epoch in (("kept", kept), ("best", best), ("final", final))},
        **{
            f"{which}_val_loss": losses.get(epoch, math.nan)
            for which, epoch in (("kept", kept), ("best", best), ("final", final))
        },
        **endings,
    }


@pytest.mark.parametrize(
    ("metrics", "line"),
    [
        (kept_metrics(2, 2, 2), "kept the model of epoch 2, the lowest val_loss (2)"),
        (
            kept_metrics(2, 2, 4),
            "kept the model of epoch 2, the lowest val_loss (2); the last epoch, 4, reached 2.8",
        ),
        (
            kept_metrics(4, 2, 4, stopped_early_at_epoch=4),
            "kept the model of epoch 4, the last to end healthy (val_loss 2.8; keep: last); the lowest was 2 "
            "at epoch 2; stopped early after epoch 4 (no better val_loss for `patience` epochs)",
        ),
        (
            kept_metrics(2, 2, 3, blown_up_at_epoch=4),
            "kept the model of epoch 2, the lowest val_loss (2); the last epoch, 3, reached 2.5; loss blew up in epoch 4",
        ),
        (kept_metrics(0, 0, 0, diverged_at_epoch=1), "no model kept: no epoch ended with finite losses"),
    ],
    ids=["best-is-last", "best-before-last", "keep-last-stopped-early", "blown-up", "none"],
)
def test_the_kept_model_line_says_which_epoch_why_and_how_training_ended(metrics, line):
    assert kept_model_line(metrics, "val_loss") == line


def test_mosaic_tiles_row_major_and_leaves_empty_cells_white():
    pixels = np.zeros((5, 2, 3, 1), np.float32)
    pixels[4] = 0.5

    canvas = images.mosaic(pixels)  # near-square: 3 columns, 2 rows

    assert canvas.shape == (4, 9, 3)
    assert np.all(canvas[:2] == 0.0)
    assert np.all(canvas[2:, 3:6] == 127.5)  # the fifth image: row 1, column 1
    assert np.all(canvas[2:, 6:] == 255.0)
    assert images.mosaic(pixels, columns=5).shape == (2, 15, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_mosaic_gives_rgb(channels):
    assert images.mosaic(np.ones((4, 2, 2, channels), np.float32)).shape == (4, 4, 3)


def test_a_tuple_axis_is_labelled_by_its_items():
    @dataclass(frozen=True)
    class Layers:
        style_layers: tuple[str, ...]

    points = grid.expand(Layers, style_layers=[("block1_conv1",), ("block1_conv1", "block2_conv1")])
    assert [grid.label(p, ["style_layers"]) for p in points] == [
        "style_layers=block1_conv1",
        "style_layers=block1_conv1+block2_conv1",
    ]
