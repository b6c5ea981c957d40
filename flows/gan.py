"""GAN flow: data -> scoring classifier -> one DCGAN per grid point (learning_rate x label_noise x
dropout), as dvc.yaml defines them, tracked in MLflow as one parent run (the final samples side by
side) with one child run per grid point; the best generator, when it trained, is registered and may
become the champion (tasks/champion.py).

    python -m flows.gan --profile quick   # minutes on a CPU
    python -m flows.gan                   # params.yaml as it is: the book's scale (docs/gan.md)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, exit_without_teardown, run_cli
from flows.registry import TECHNIQUES
from flows.technique_run import SweepPoint, raise_if_failed, technique_run
from tasks import grid
from tasks.gan import log

log_training = task(log.log_training, name="log-training")


@flow(name="gan")
def gan_flow(
    profile: str | None = None, root: Path = REPO_ROOT, sweep: SweepPoint | None = None
) -> dict[str, Any]:
    """Run the GAN stages through DVC and log every grid point's training to MLflow.

    A point whose loss became NaN (or that collapsed with `instability.action: stop`) keeps its last
    good generator; its child run, the parent run and the flow run end FAILED once all is logged.
    An interrupted run resumes each point after its last finished epoch.
    """
    with technique_run(TECHNIQUES["gan"], profile, root, sweep) as run:
        paths = run.paths
        run.run_stages(through="gan_train")
        child_run_ids = log_training(run.run_id, run.experiment_id, paths)
        decision = run.promote(log.log_serving_model, child_run_ids, paths)
        points = grid.read_points(paths.training / "points.json")
        lines = [
            "## GAN",
            f"- MLflow run `{run.run_id}` ({run.tracking_uri}); final samples side by side: "
            f"`{paths.training / 'comparison.png'}`",
        ]
        for point in points:
            metrics = point["metrics"]
            line = (
                f"- `{point['label']}`: Frechet distance {metrics.get('frechet_distance', float('nan')):.1f}"
                f" (epoch {metrics.get('kept_epoch', 0)})"
                + (
                    f", moving average {metrics['ema_frechet_distance']:.1f} (epoch {metrics['ema_kept_epoch']})"
                    if "ema_frechet_distance" in metrics
                    else ""
                )
                + (
                    f", confidently classified {metrics['confident_share']:.0%}"
                    + (
                        f" (moving average {metrics['ema_confident_share']:.0%})"
                        if "ema_confident_share" in metrics
                        else ""
                    )
                    + f" against {metrics['real_confident_share']:.0%} of real images"
                    + f", spread over {metrics['effective_classes']:.1f} classes"
                    + (
                        f" (moving average {metrics['ema_effective_classes']:.1f})"
                        if "ema_effective_classes" in metrics
                        else ""
                    )
                    + f" against {metrics['real_effective_classes']:.1f}"
                    if "confident_share" in metrics
                    else ""
                )
                + f", d_loss {metrics.get('d_loss', float('nan')):.3f}, g_loss {metrics.get('g_loss', float('nan')):.3f} "
                f"after {metrics['epochs_completed']} epochs, {metrics['steps_per_second']:.1f} steps/s"
                + (
                    f"; stopped early after epoch {metrics['stopped_early_at_epoch']}"
                    if metrics.get("stopped_early_at_epoch")
                    else ""
                )
            )
            if point["instability"]:
                line += f" -- {point['instability']}"
            lines.append(line)
        lines.append(decision.summary())
        result = run.publish(
            "\n".join(lines),
            "gan-summary",
            child_run_ids=child_run_ids,
            metrics={point["name"]: point["metrics"] for point in points},
            champion=decision.tags(),
        )
        raise_if_failed(points)
    return result


if __name__ == "__main__":
    exit_without_teardown(run_cli(gan_flow, ["gan"]))
