"""Variational autoencoder flow: data -> one VAE per grid point (latent_dim x beta) -> latent-space
images, as dvc.yaml defines them, tracked in MLflow as one parent run (the comparison of latent
grids) with one child run per grid point; the best point's decoder, when it trained, is registered
and may become the champion (tasks/champion.py).

    python -m flows.vae --profile quick   # minutes on a CPU
    python -m flows.vae                   # params.yaml as it is: the book's scale (docs/vae.md)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, exit_without_teardown, run_cli
from flows.registry import TECHNIQUES
from flows.technique_run import SweepPoint, raise_if_failed, technique_run
from tasks import grid
from tasks.kept_epoch import kept_model_line
from tasks.vae import log
from tasks.vae.params import VaePaths

log_training = task(log.log_training, name="log-training")
log_samples = task(log.log_samples, name="log-samples")


@flow(name="vae")
def vae_flow(
    profile: str | None = None, root: Path = REPO_ROOT, sweep: SweepPoint | None = None
) -> dict[str, Any]:
    """Run the VAE stages through DVC and log every grid point's training and latent space to MLflow.

    A grid point whose loss became NaN keeps its last good epoch's models; its child run and the
    parent run end FAILED and the flow raises `tasks.grid.TrainingFailed` once everything is
    logged.
    """
    with technique_run(TECHNIQUES["vae"], profile, root, sweep) as run:
        paths = run.paths
        run.run_stages(through="vae_train")
        child_run_ids = log_training(run.run_id, run.experiment_id, paths)
        decision = run.promote(log.log_serving_model, child_run_ids, paths)
        run.run_stages(through="vae_sample")
        log_samples(run.run_id, child_run_ids, paths)
        points = grid.read_points(paths.training / "points.json")
        sample_metrics = json.loads(paths.sample_metrics.read_text())
        summary = summarize(points, sample_metrics, paths, run.run_id, run.tracking_uri)
        result = run.publish(
            f"{summary}\n{decision.summary()}",
            "vae-summary",
            child_run_ids=child_run_ids,
            metrics={p["name"]: {**p["metrics"], **sample_metrics.get(p["name"], {})} for p in points},
            champion=decision.tags(),
        )
        raise_if_failed(points)
    return result


def summarize(
    points: list[dict[str, Any]],
    sample_metrics: dict[str, Any],
    paths: VaePaths,
    run_id: str,
    tracking_uri: str,
) -> str:
    lines = [
        "## Variational autoencoder",
        f"- MLflow run `{run_id}` ({tracking_uri}); latent grids side by side: `{paths.samples / 'comparison.png'}`",
    ]
    for point in points:
        metrics = point["metrics"]
        concepts = {
            key: value
            for key, value in sample_metrics.get(point["name"], {}).items()
            if "target_share" in key
        }
        line = (
            f"- `{point['label']}`: test loss {metrics['test_total_loss']:.2f} per image (reconstruction "
            f"{metrics['test_reconstruction_loss']:.2f} + KL {metrics['test_kl_loss']:.2f}), "
            f"{metrics['seconds_per_epoch']:.1f} s/epoch; {kept_model_line(metrics, 'val_total_loss')}"
        )
        if concepts:
            line += "; concept target share " + ", ".join(
                f"{key.split('/')[0]} {value:.0%}"
                for key, value in concepts.items()
                if key.endswith("strength_1")
            )
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    exit_without_teardown(run_cli(vae_flow, ["vae"]))
