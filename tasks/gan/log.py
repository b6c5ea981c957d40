"""What the GAN's steps leave goes to MLflow (called by the flow; no DVC stage imports this): one
child run per grid point, and the best generator as a pyfunc image generator for the model registry."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow
from PIL import Image

from tasks import champion, grid, storage, tracking
from tasks.gan import serving
from tasks.gan.params import GanPaths
from tasks.image_data import read_summary

# The classifier's verdicts per epoch (tasks/gan/score.py ConfidenceScore), raw, moving average, real.
JUDGEMENTS = ("confident_share", "effective_classes")


def log_training(parent_run_id: str, experiment_id: str, paths: GanPaths) -> dict[str, str]:
    """One child run per grid point: its settings, d_loss/g_loss per step, the Frechet distance and
    the classifier's confident share (generated and real) per epoch, the fixed-latent grid of every epoch as a stepped image, and the generator(s); tagged with
    its `instability` if it diverged or collapsed, and FAILED if the train step said it failed. The
    comparison of final samples, the best Frechet distance, and the best confident share and
    effective classes beside the real images' go on the parent."""
    client = mlflow.MlflowClient()
    summary = read_summary(paths.data)
    classifier = json.loads((paths.classifier / "metrics.json").read_text(encoding="utf-8"))
    tracking.log_metrics(parent_run_id, {f"classifier.{k}": v for k, v in classifier.items() if k != "task"})
    child_ids, scores, judged = {}, [], {}
    for result in grid.read_points(paths.training / "points.json"):
        folder, metrics = paths.training / result["name"], result["metrics"]
        with tracking.start_child_run(parent_run_id, experiment_id, result["label"]) as child:
            run_id = child.info.run_id
            log_point(client, run_id, folder, result, summary)
            for model in sorted((paths.models / result["name"]).glob("*.keras")):
                tracking.log_keras_model(run_id, model, name=model.stem)
            child_ids[result["name"]] = run_id
            if math.isfinite(metrics.get("frechet_distance", math.nan)):
                scores.append(metrics["frechet_distance"])
            for key in (prefix + judgement for judgement in JUDGEMENTS for prefix in ("", "ema_", "real_")):
                if math.isfinite(metrics.get(key, math.nan)):
                    judged.setdefault(key, []).append(metrics[key])
        if result["instability"]:
            tracking.set_tags(run_id, {"instability": result["instability"]})
        if result["failure"]:
            tracking.mark_failed(run_id, result["failure"])
    tracking.log_metrics(parent_run_id, {"best_frechet_distance": min(scores, default=math.nan)})
    for judgement in JUDGEMENTS:
        if f"real_{judgement}" in judged:  # one reference, measured once for every point
            generated = judged.get(judgement, []) + judged.get(f"ema_{judgement}", [])
            tracking.log_metrics(
                parent_run_id,
                {
                    f"best_{judgement}": max(generated, default=math.nan),
                    f"real_{judgement}": judged[f"real_{judgement}"][0],
                },
            )
    if (paths.training / "comparison.png").is_file():
        client.log_artifact(parent_run_id, str(paths.training / "comparison.png"))
    return child_ids


def log_serving_model(child_run_ids: dict[str, str], paths: GanPaths) -> champion.Candidate | None:
    """Of every point that did not fail, its better generator (raw or moving average, by Frechet
    distance); the best of those as a pyfunc image generator (num_images and a seed, or latent points
    -> PNG images) on its child run: the registry's candidate. None if no generator has a finite
    Frechet distance."""
    from tasks import image_serving  # loads Keras: only a flow run whose training ran gets here

    choices = []
    for point in grid.read_points(paths.training / "points.json"):
        stem, score = serving.best_generator(point["metrics"])
        path = paths.models / point["name"] / f"{stem}.keras"
        if not point["failure"] and math.isfinite(score) and path.is_file():
            choices.append((score, point, stem, path))
    if not choices:
        return None
    score, best, stem, path = min(choices, key=lambda choice: choice[0])
    model, md5 = champion.log_pyfunc_model(
        child_run_ids[best["name"]],
        image_serving.LatentImages(),
        {"model": path},
        signature=image_serving.SIGNATURE,
        input_example=image_serving.INPUT_EXAMPLE,
    )
    label = f"{best['label']}, {stem}"
    return champion.Candidate(model.model_id, model.source_run_id, md5, score, label=label)


def log_point(
    client: mlflow.MlflowClient, run_id: str, folder: Path, result: dict[str, Any], summary: dict[str, Any]
) -> None:
    """A point's settings, its per-step and per-epoch metrics, its final metrics and its epoch grids."""
    tracking.log_params(
        run_id,
        {
            **result["point"],
            "dataset": summary["dataset"],
            "image_shape": "x".join(map(str, summary["image_shape"])),
        },
    )
    tracking.log_metric_rows(
        run_id,
        [{k: v for k, v in row.items() if k != "epoch"} for row in storage.read_rows(folder / "steps.csv")],
        step_key="step",
    )
    tracking.log_metric_rows(
        run_id,
        [
            {("epoch_" + k if k in ("d_loss", "g_loss") else k): v for k, v in row.items()}
            for row in storage.read_rows(folder / "epochs.csv")
        ],
        step_key="epoch",
    )
    tracking.log_metrics(
        run_id, {f"final_{k}": v for k, v in result["metrics"].items() if isinstance(v, float)}
    )
    for grid_image in sorted((folder / "grids").glob("*.png")):
        key, _, epoch = grid_image.stem.rpartition("epoch_")
        with Image.open(grid_image) as image:
            client.log_image(run_id, image.copy(), key=f"{key}samples", step=int(epoch))
