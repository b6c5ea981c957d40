"""GAN flow: data -> scoring classifier -> one DCGAN per grid point (learning_rate x label_noise x
dropout), as dvc.yaml defines them, tracked in MLflow as one parent run (the final samples side by
side) with one child run per grid point.

    python -m flows.gan [--profile quick]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, run_cli
from flows.technique_run import technique_run
from tasks import gan, tracking
from tasks.params import parse_section
from tasks.runtime import RuntimeParams

log_training = task(gan.log_training, name="log-training")


def validate(params: dict[str, Any]) -> None:
    """Fail before anything runs if the sections this flow reads are invalid."""
    parse_section(params, "gan", gan.GanParams)
    parse_section(params, "runtime", RuntimeParams)
    parse_section(params, "tracking", tracking.TrackingParams)


@flow(name="gan")
def gan_flow(profile: str | None = None, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Run the GAN stages through DVC and log every grid point's training to MLflow.

    A point whose loss became NaN (or that collapsed with `instability.action: stop`) keeps its last
    good generator; its child run, the parent run and the flow run end FAILED once all is logged.
    An interrupted run resumes each point from its last finished epoch.

    Args:
        profile: name of a params overlay in profiles/ (e.g. "quick"); None = params.yaml as is.
        root: repo root holding params.yaml and dvc.yaml.

    Returns:
        The MLflow run ids and each grid point's metrics.
    """
    root = Path(root).resolve()
    paths = gan.GanPaths().under(root)
    child_run_ids: dict[str, str] = {}
    with technique_run(gan.TECHNIQUE, profile, root, validate) as run:
        action = parse_section(run.params, "gan", gan.GanParams).train.instability.action
        for stage in run.stages:
            run.run_stage(stage)
            if stage.name == "gan_train":
                child_run_ids = log_training(run.run_id, run.experiment_id, paths, action)
        points = json.loads((paths.training / "points.json").read_text())
        lines = [
            "## GAN",
            f"- MLflow run `{run.run_id}` ({run.tracking_uri}); final samples side by side: "
            f"`{paths.training / 'comparison.png'}`",
        ]
        for point in points:
            metrics = point["metrics"]
            line = (
                f"- `{point['label']}`: Frechet distance {metrics.get('frechet_distance', float('nan')):.1f}"
                + (
                    f" (moving average {metrics['ema_frechet_distance']:.1f})"
                    if "ema_frechet_distance" in metrics
                    else ""
                )
                + f", d_loss {metrics.get('d_loss', float('nan')):.3f}, g_loss {metrics.get('g_loss', float('nan')):.3f} "
                f"after {metrics['epochs_completed']} epochs, {metrics['steps_per_second']:.1f} steps/s"
            )
            if metrics["diverged_at_epoch"] or metrics["collapsed_at_epoch"]:
                line += f" -- {gan.failure_message(point, action)}"
            lines.append(line)
        result = run.publish(
            "\n".join(lines),
            "gan-summary",
            child_run_ids=child_run_ids,
            metrics={point["name"]: point["metrics"] for point in points},
        )
        failed = [
            point
            for point in points
            if point["metrics"]["diverged_at_epoch"]
            or (point["metrics"]["collapsed_at_epoch"] and action == "stop")
        ]
        if failed:
            raise gan.TrainingFailed("; ".join(gan.failure_message(point, action) for point in failed))
    return result


if __name__ == "__main__":
    raise SystemExit(run_cli(gan_flow, validate))
