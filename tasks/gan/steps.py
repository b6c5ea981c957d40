"""The GAN's train step: `python -m tasks.gan.steps train` (from the repo root, as dvc.yaml runs
it) trains one GAN per grid point (learning_rate x label_noise x dropout). Every epoch it records
the losses, a grid of images from the same latent vectors and the Frechet distance, so runs are
comparable, and the share of generated images the pipeline's classifier is confident about (against
that of real images); NaN or a collapsing discriminator is detected; an interrupted point resumes after its
last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks import grid, images, storage
from tasks.gan.model import (
    GAN,
    CollapseGuard,
    adam,
    build_discriminator,
    build_generator,
    fixed_latents,
    generate,
)
from tasks.gan.params import GanError, GanPaths, InstabilityParams, load
from tasks.gan.resume import OWNER, FolderOwner, claim_folder, restore_checkpoint, save_checkpoint
from tasks.gan.score import (
    ConfidenceScore,
    confidence_score,
    feature_statistics,
    features_of,
    frechet_distance,
    score_features,
)
from tasks.image_batches import image_dataset
from tasks.image_data import Split, load_split
from tasks.params import RuntimeParams
from tasks.runtime import configure_runtime
from tasks.steps import run_steps
from tasks.training import NanGuard, ProgressLog, all_finite, save_model_atomically

log = logging.getLogger(__name__)

WORK_DIR = Path(".gendl/gan")  # per-point work in progress (resume checkpoints), outside DVC's outputs
RESUME_DIR_VARIABLE = "GENDL_RESUME_DIR"  # a folder all workers reach, for WORK_DIR's contents
CHECKPOINT = "checkpoint"  # the subfolder of a point's work folder holding its resume checkpoint


@dataclass(frozen=True)
class GridPoint:
    learning_rate: float
    label_noise: float
    dropout: float


@dataclass(frozen=True)
class TrainingSettings:
    """How every point of the grid trains (the GridPoint says what differs between them)."""

    latent_dim: int
    width: float  # multiplies the book's filter counts of the generator
    discriminator_width: float  # ...and of the discriminator
    epochs: int
    batch_size: int
    adam_beta_1: float  # both Adams' first-moment decay
    ema_decay: float  # moving average of the generator's weights; 0 = off
    grid_images: int  # images from fixed latent vectors, every epoch
    instability: InstabilityParams  # when a collapse is called, and what then
    num_images: int  # generated and real images per Frechet distance
    keep: str  # each generator's kept epoch: best = its lowest Frechet distance; last
    patience: int  # stop after this many epochs without a lower Frechet distance; 0 = off


class EpochRecords(keras.callbacks.Callback):
    """Per step d_loss/g_loss and per epoch a grid from fixed latents, the Frechet distance and,
    with a `confidence` score, the share of the scoring images the classifier is confident about
    (raw and moving-average generator; beside the real images' share) and the epoch's losses,
    written to the point's work folder as they come; a run resumed after `initial_epoch` first drops
    the rows of later epochs."""

    def __init__(
        self,
        folder: Path,
        latents: np.ndarray,
        extractor: Callable,
        real_statistics: tuple[np.ndarray, np.ndarray],
        num_images: int,
        seed: int,
        initial_epoch: int = 0,
        confidence: ConfidenceScore | None = None,
    ):
        super().__init__()
        self.folder, self.latents, self.extractor = folder, latents, extractor
        self.real_statistics, self.num_images, self.seed = real_statistics, num_images, seed
        self.initial_epoch, self.confidence = initial_epoch, confidence
        self.steps_path, self.epochs_path = folder / "steps.csv", folder / "epochs.csv"

    def on_train_begin(self, logs=None):
        done = self.initial_epoch
        self.epoch_rows = [row for row in storage.read_rows(self.epochs_path) if row["epoch"] <= done]
        self.step_rows = [row for row in storage.read_rows(self.steps_path) if row["epoch"] <= done]
        self.step = int(self.step_rows[-1]["step"]) if self.step_rows else 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.step_rows.append(
            {"step": self.step, "epoch": self.epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        )

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
        score_latents = fixed_latents(self.num_images, self.latents.shape[1], self.seed + 1)
        generators = {"": self.model.generator}
        if self.model.ema_generator is not None:
            generators["ema_"] = self.model.ema_generator
        # A NaN epoch has nothing to show.
        for prefix, generator in generators.items() if all_finite(row) else ():
            images.save_image(
                images.mosaic(generate(generator, self.latents)),
                self.folder / "grids" / f"{prefix}epoch_{epoch + 1:03d}.png",
            )
            generated = generate(generator, score_latents)
            statistics = feature_statistics(features_of(self.extractor, generated))
            row[f"{prefix}frechet_distance"] = frechet_distance(*statistics, *self.real_statistics)
            if self.confidence is not None:
                row |= {f"{prefix}{key}": value for key, value in self.confidence.judge(generated).items()}
        if self.confidence is not None:
            row["real_confident_share"] = self.confidence.real_share
            row["real_effective_classes"] = self.confidence.real_classes
        self.epoch_rows.append(row)
        if logs is not None:  # the scores, for the callbacks after this one (EarlyStopping)
            logs.update({key: value for key, value in row.items() if key != "epoch"})
        storage.write_rows(self.epochs_path, self.epoch_rows)
        storage.write_rows(self.steps_path, self.step_rows)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))


# What is scored per generator, raw and moving average ("ema_"): the kept epoch's values are the point's.
GENERATOR_SCORES = ("frechet_distance", "confident_share", "effective_classes")


def generators_of(gan: GAN) -> dict[str, keras.Model]:
    """The generators a point keeps, by the prefix of their files and scores: "" raw, "ema_" average."""
    return {"": gan.generator} | ({"ema_": gan.ema_generator} if gan.ema_generator is not None else {})


def kept_epoch(rows: Sequence[dict[str, float]], keep: str, prefix: str = "") -> int:
    """The epoch whose generator `prefix` is kept among the epoch rows so far: the last, or the one
    with the lowest finite Frechet distance (the first of equals); 0 if there is none."""
    key = f"{prefix}frechet_distance"
    scored = [row for row in rows if math.isfinite(row.get(key, math.nan))]
    if not scored:
        return 0
    return int(scored[-1]["epoch"] if keep == "last" else min(scored, key=lambda row: row[key])["epoch"])


def save_generators(gan: GAN, folder: Path, rows: Sequence[dict[str, float]], keep: str) -> None:
    """After a healthy epoch (the last of `rows`): each generator whose kept epoch it is."""
    for prefix, generator in generators_of(gan).items():
        if kept_epoch(rows, keep, prefix) == rows[-1]["epoch"]:
            save_model_atomically(generator, folder / f"{prefix}generator.keras")


def kept_scores(rows: Sequence[dict[str, float]], last_good_epoch: int, keep: str) -> dict[str, float]:
    """The point's metrics: the last good epoch's losses and the real images' scores; each generator's
    scores at its kept epoch, with that epoch, its best and its final Frechet distance."""
    good = [row for row in rows if row["epoch"] <= last_good_epoch]
    if not good:
        return {}
    final = good[-1]
    metrics = {key: value for key, value in final.items() if key != "epoch"}
    for prefix in ("", "ema_"):
        if f"{prefix}frechet_distance" not in final:
            continue
        kept = next(row for row in good if row["epoch"] == kept_epoch(good, keep, prefix))
        best = next(row for row in good if row["epoch"] == kept_epoch(good, "best", prefix))
        metrics |= {
            f"{prefix}{score}": kept[score_key]
            for score in GENERATOR_SCORES
            if (score_key := f"{prefix}{score}") in kept
        }
        metrics |= {
            f"{prefix}kept_epoch": int(kept["epoch"]),  # rows read back from epochs.csv hold floats
            f"{prefix}best_epoch": int(best["epoch"]),
            f"best_{prefix}frechet_distance": best[f"{prefix}frechet_distance"],
            f"final_{prefix}frechet_distance": final[f"{prefix}frechet_distance"],
        }
    return metrics


def work_folder(root: Path, point: GridPoint, settings: dict[str, Any], data_path: Path) -> Path:
    """Where a point's run in progress lives: named by everything it depends on, so a resume only
    ever continues the same run. Under $GENDL_RESUME_DIR when set (the team stack's workers share
    one): a flow run retried in another workspace, or on another worker, resumes there."""
    digest = hashlib.sha256(json.dumps({**settings, **asdict(point)}, sort_keys=True).encode())
    digest.update(storage.sha256_of(data_path).encode())
    shared = os.environ.get(RESUME_DIR_VARIABLE)
    return (Path(shared) / "gan" if shared else root / WORK_DIR) / digest.hexdigest()[:16]


def train_point(
    point: GridPoint,
    train: Split,
    test: Split,
    settings: TrainingSettings,
    extractor: Callable,
    folder: Path,
    runtime: RuntimeParams,
    confidence: ConfidenceScore | None = None,
) -> dict[str, Any]:
    """Train one GAN of the grid in `folder`, resuming after its last finished epoch if one is there;
    with a `confidence` score, each epoch also records the classifier's confident share."""
    keras.backend.clear_session()
    strategy = configure_runtime(
        runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute
    )
    image_shape, latent_dim, epochs = train.images.shape[1:], settings.latent_dim, settings.epochs
    with strategy.scope():
        gan = GAN(
            build_discriminator(image_shape, point.dropout, settings.discriminator_width),
            build_generator(image_shape, latent_dim, settings.width),
            latent_dim,
            point.label_noise,
            settings.ema_decay,
            runtime.seed,
        )
        gan.compile(
            d_optimizer=adam(point.learning_rate, settings.adam_beta_1),
            g_optimizer=adam(point.learning_rate, settings.adam_beta_1),
            jit_compile=runtime.jit_compile,
        )
        gan(np.zeros((1, latent_dim), np.float32))  # built, so a checkpoint can be restored into it
    owner = FolderOwner(folder, claim_folder(folder))
    initial_epoch = restore_checkpoint(folder / CHECKPOINT, gan)
    if initial_epoch:
        log.info("resuming after epoch %d from %s", initial_epoch, folder)
    records = EpochRecords(
        folder,
        fixed_latents(settings.grid_images, latent_dim, runtime.seed),
        extractor,
        feature_statistics(features_of(extractor, test.images[: settings.num_images])),
        settings.num_images,
        runtime.seed,
        initial_epoch,
        confidence,
    )

    def save_epoch(epoch: int) -> None:  # after the epoch's records: a resume never skips a row
        save_generators(gan, folder, records.epoch_rows, settings.keep)
        save_checkpoint(folder / CHECKPOINT, gan, epoch)

    nan_guard = NanGuard(save_epoch, initial_epoch)
    instability = settings.instability
    collapse_guard = CollapseGuard(instability.d_loss_below, instability.patience, instability.action)
    stopping = early_stopping(settings, gan)
    global_batch = settings.batch_size * strategy.num_replicas_in_sync
    steps_per_epoch = math.ceil(len(train.images) / global_batch)
    started = time.perf_counter()
    gan.fit(
        image_dataset(train.images, global_batch, shuffle=True, seed=runtime.seed),
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=[
            owner,
            records,
            nan_guard,
            collapse_guard,
            *stopping,
            ProgressLog(epochs, steps_per_epoch, global_batch, loss_key="d_loss"),
        ],
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - started
    last = nan_guard.last_good_epoch
    return {
        "epochs_completed": last,
        "diverged_at_epoch": nan_guard.diverged_at_epoch,
        "collapsed_at_epoch": collapse_guard.collapsed_at_epoch,
        "stopped_early_at_epoch": stopping[0].stopped_epoch + 1
        if stopping and stopping[0].stopped_epoch
        else 0,
        "seconds": seconds,
        "steps_per_second": len(records.step_rows) / seconds if seconds else 0.0,
        **kept_scores(records.epoch_rows, last, settings.keep),
    }


def early_stopping(settings: TrainingSettings, gan: GAN) -> list[keras.callbacks.Callback]:
    """Keras's EarlyStopping on the moving average's Frechet distance (the raw generator's without
    one) when `settings.patience` is set. A resumed run starts counting anew."""
    if not settings.patience:
        return []
    monitor = "ema_frechet_distance" if gan.ema_generator is not None else "frechet_distance"
    return [keras.callbacks.EarlyStopping(monitor=monitor, patience=settings.patience, mode="min")]


def failure_message(result: dict[str, Any], action: str) -> str:
    metrics = result["metrics"]
    kept = (
        f"kept the generator of epoch {metrics['epochs_completed']}"
        if metrics["epochs_completed"]
        else "no epoch finished"
    )
    if metrics["diverged_at_epoch"]:
        return f"{result['label']}: loss became NaN in epoch {metrics['diverged_at_epoch']}; {kept} (lower gan.train.learning_rate)"
    return (
        f"{result['label']}: collapsing from epoch {metrics['collapsed_at_epoch']} (discriminator loss near zero "
        f"while the generator loss rose){'; stopped, ' + kept if action == 'stop' else ''}"
    )


def point_record(
    index: int, point: GridPoint, varying: Sequence[str], metrics: dict[str, Any], action: str
) -> dict[str, Any]:
    """The point's entry in points.json. A NaN loss, or a collapse with `action: stop`, is its
    `failure`; any NaN or collapse is also its `instability` (a collapse with `action: warn` only that)."""
    result = {**grid.record(index, point, varying, metrics), "instability": ""}
    if metrics["diverged_at_epoch"] or metrics["collapsed_at_epoch"]:
        result["instability"] = failure_message(result, action)
        log.warning(result["instability"])
        if metrics["diverged_at_epoch"] or action == "stop":
            result["failure"] = result["instability"]
    return result


def train_grid(
    paths: GanPaths,
    settings: TrainingSettings,
    *,
    learning_rates: Sequence[float],
    label_noises: Sequence[float],
    dropouts: Sequence[float],
    features: str,
    confidence: float,
    runtime: RuntimeParams,
    root: Path = Path("."),
) -> list[dict[str, Any]]:
    """Train one GAN per grid point; a point interrupted earlier resumes where it stopped. The
    classifier judges every epoch's scoring images: the share it puts in one class with probability
    >= `confidence`, against that of the held-out real images (measured once here)."""
    classifier = paths.classifier / "classifier.keras"
    if not classifier.is_file():
        raise GanError(f"{classifier} not found: run the classifier step first")
    train, test = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    if len(test.images) < 2:
        raise GanError(
            f"the score needs at least 2 held-out real images, {paths.data / 'test.npz'} has {len(test.images)}"
        )
    extractor = score_features(classifier, features)
    judge = confidence_score(classifier, confidence, test.images[: settings.num_images])
    log.info(
        "real images the classifier is confident about (>= %g): %.3f, spread over %.1f classes",
        confidence,
        judge.real_share,
        judge.real_classes,
    )
    points = grid.expand(GridPoint, learning_rate=learning_rates, label_noise=label_noises, dropout=dropouts)
    varying = grid.varying_fields(points)
    depends_on = {  # besides the point and the data: what a resumed run must share with the first
        **asdict(settings),
        "instability": settings.instability.model_dump(),
        "features": features,
        "confidence": confidence,
        "classifier": storage.sha256_of(classifier),
        "seed": runtime.seed,
        "dtype_policy": runtime.dtype_policy,
    }
    for folder in (paths.models, paths.training):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    results, finals = [], []
    for index, point in enumerate(points):
        name, label = grid.point_name(index), grid.label(point, varying)
        folder = work_folder(root, point, depends_on, paths.data / "train.npz")
        log.info("point %d/%d: %s (work in %s)", index + 1, len(points), label, folder)
        metrics = train_point(point, train, test, settings, extractor, folder, runtime, judge)
        results.append(point_record(index, point, varying, metrics, settings.instability.action))
        (paths.models / name).mkdir()
        for model in folder.glob("*generator.keras"):
            shutil.copy2(model, paths.models / name / model.name)
        shutil.copytree(
            folder, paths.training / name, ignore=shutil.ignore_patterns(CHECKPOINT, OWNER, "*.keras")
        )
        for prefix, suffix in (("", ""), ("ema_", " (EMA)")):  # the kept epochs' samples
            kept = metrics.get(f"{prefix}kept_epoch", 0)
            kept_grid = folder / "grids" / f"{prefix}epoch_{kept:03d}.png"
            if kept and kept_grid.is_file():
                finals.append((f"{label}{suffix}, epoch {kept}", images.read_image(kept_grid)))
        shutil.rmtree(folder)  # finished: nothing left to resume
    if finals:
        images.save_image(
            images.labelled_grid(finals, tile_height=256, columns=4), paths.training / "comparison.png"
        )
    grid.write_points(paths.training / "points.json", results)
    storage.write_json(paths.train_metrics, {result["name"]: result["metrics"] for result in results})
    return results


def train(root: Path) -> None:
    """The `train` step."""
    params, runtime = load(root)
    settings = TrainingSettings(
        latent_dim=params.model.latent_dim,
        width=params.model.width,
        discriminator_width=params.model.discriminator_width,
        epochs=params.train.epochs,
        batch_size=params.train.batch_size,
        adam_beta_1=params.train.adam_beta_1,
        ema_decay=params.train.ema_decay,
        grid_images=params.train.grid_images,
        instability=params.train.instability,
        num_images=params.score.num_images,
        keep=params.train.keep,
        patience=params.train.patience,
    )
    train_grid(
        storage.under(root, GanPaths()),
        settings,
        learning_rates=params.train.learning_rate,
        label_noises=params.train.label_noise,
        dropouts=params.model.dropout,
        features=params.score.features,
        confidence=params.score.confidence,
        runtime=runtime,
        root=root,
    )


if __name__ == "__main__":
    sys.exit(run_steps({"train": train}, __doc__))
