"""What the VAE's steps leave, logged to MLflow by the flow (no DVC stage imports this module, so
changing it re-runs nothing): one child run per grid point with its losses per epoch, its encoder
and decoder and its latent-space images; the comparison of latent grids on the parent run; the best
point's decoder as a pyfunc image generator for the model registry."""

from __future__ import annotations

import json
import math
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from tasks import champion, grid, tracking
from tasks.image_data import read_summary
from tasks.kept_epoch import kept_model_line
from tasks.storage import read_history
from tasks.vae.params import VaePaths


def log_training(parent_run_id: str, experiment_id: str, paths: VaePaths) -> dict[str, str]:
    """One child run per grid point: its settings, train and test losses per epoch, the encoder and
    decoder as Keras models; FAILED if the train step recorded a failure. Returns {point name: child
    run id}."""
    summary = read_summary(paths.data)
    image_shape = tuple(summary["image_shape"])
    child_ids, test_losses = {}, []
    for result in grid.read_points(paths.training / "points.json"):
        point, metrics = result["point"], result["metrics"]
        with tracking.start_child_run(parent_run_id, experiment_id, result["label"]) as child:
            run_id = child.info.run_id
            shape = "x".join(map(str, image_shape))
            tracking.log_params(run_id, {**point, "dataset": summary["dataset"], "image_shape": shape})
            rows = [
                {
                    "epoch": row["epoch"],
                    **{_metric_name(key): value for key, value in row.items() if key != "epoch"},
                }
                for row in read_history(paths.training / f"{result['name']}.csv")
            ]
            tracking.log_metric_rows(run_id, rows, step_key="epoch")
            tracking.log_metrics(run_id, {**metrics, "test_negative_elbo": negative_elbo(metrics)})
            tracking.set_tags(run_id, {"train.kept_model": kept_model_line(metrics, "val_total_loss")})
            folder = paths.models / result["name"]
            if (folder / "decoder.keras").is_file():
                latent = TensorSpec(np.dtype("float32"), (-1, point["latent_dim"]), "z")
                log_variance = TensorSpec(np.dtype("float32"), (-1, point["latent_dim"]), "z_log_var")
                pixels = TensorSpec(np.dtype("float32"), (-1, *image_shape), "images")
                tracking.log_keras_model(
                    run_id,
                    folder / "encoder.keras",
                    name="encoder",
                    signature=ModelSignature(Schema([pixels]), Schema([latent, log_variance])),
                )
                tracking.log_keras_model(
                    run_id,
                    folder / "decoder.keras",
                    name="decoder",
                    signature=ModelSignature(Schema([latent]), Schema([pixels])),
                )
            child_ids[result["name"]] = run_id
            test_losses.append(metrics["test_total_loss"])
        if result["failure"]:
            tracking.mark_failed(run_id, result["failure"])
    tracking.log_metrics(
        parent_run_id, {"best_test_total_loss": min(filter(math.isfinite, test_losses), default=math.nan)}
    )
    return child_ids


def negative_elbo(metrics: dict[str, Any]) -> float:
    """-ELBO per image of the test split, reconstruction + KL: the total loss at beta = 1, so points
    trained with different betas compare on one scale (their total losses weight the KL differently)."""
    return metrics["test_reconstruction_loss"] + metrics["test_kl_loss"]


def log_serving_model(child_run_ids: dict[str, str], paths: VaePaths) -> champion.Candidate | None:
    """The decoder of the point with the lowest test -ELBO, as a pyfunc image generator (num_images
    and a seed, or latent points -> PNG images) on its child run: the registry's candidate. None if
    no point finished with a finite one."""
    from tasks import image_serving  # loads Keras: only a flow run whose training ran gets here

    scored = [
        (negative_elbo(point["metrics"]), point)
        for point in grid.read_points(paths.training / "points.json")
        if not point["failure"] and (paths.models / point["name"] / "decoder.keras").is_file()
    ]
    scored = [(score, point) for score, point in scored if math.isfinite(score)]
    if not scored:
        return None
    score, best = min(scored, key=lambda item: item[0])
    model, md5 = champion.log_pyfunc_model(
        child_run_ids[best["name"]],
        image_serving.LatentImages(),
        {"model": paths.models / best["name"] / "decoder.keras"},
        signature=image_serving.SIGNATURE,
        input_example=image_serving.INPUT_EXAMPLE,
    )
    return champion.Candidate(model.model_id, model.source_run_id, md5, score, label=best["label"])


def _metric_name(history_key: str) -> str:
    """CSVLogger's keys as MLflow groups them: total_loss -> train/total_loss, val_* -> test/*."""
    return (
        f"test/{history_key.removeprefix('val_')}"
        if history_key.startswith("val_")
        else f"train/{history_key}"
    )


def log_samples(parent_run_id: str, child_run_ids: dict[str, str], paths: VaePaths) -> list[dict[str, Any]]:
    """Each point's images and concept metrics into its child run; the comparison onto the parent.

    A concept's target share is one metric stepped by strength in percent ("concept_00/target_share"
    at steps 0, 50, 100, ...), so MLflow charts it against the strength.
    """
    client = mlflow.MlflowClient()
    results = json.loads((paths.samples / "samples.json").read_text(encoding="utf-8"))
    for result in results:
        run_id = child_run_ids[result["name"]]
        client.log_artifacts(run_id, str(paths.samples / result["name"]), "samples")
        for key, value in result["metrics"].items():
            name, _, strength = key.partition("/strength_")
            tracking.log_metrics(run_id, {name: value}, step=round(100 * float(strength)) if strength else 0)
    if (paths.samples / "comparison.png").is_file():
        client.log_artifact(parent_run_id, str(paths.samples / "comparison.png"))
    return results
