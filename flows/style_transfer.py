"""Neural style transfer flow: images -> one stylised image per grid point, as dvc.yaml defines
them, tracked in MLflow as one parent run (comparison grid) with one child run per grid point.

    python -m flows.style_transfer [--profile quick]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, run_cli
from flows.technique_run import technique_run
from tasks import style_transfer, tracking
from tasks.params import parse_section
from tasks.runtime import RuntimeParams

log_stylizations = task(style_transfer.log_stylizations, name="log-stylizations")


def validate(params: dict[str, Any]) -> None:
    """Fail before anything runs if the sections this flow reads are invalid."""
    parse_section(params, "style_transfer", style_transfer.StyleTransferParams)
    parse_section(params, "runtime", RuntimeParams)
    parse_section(params, "tracking", tracking.TrackingParams)


@flow(name="style-transfer")
def style_transfer_flow(profile: str | None = None, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Run the style transfer stages through DVC and log every grid point's image to MLflow.

    Args:
        profile: name of a params overlay in profiles/ (e.g. "quick"); None = params.yaml as is.
        root: repo root holding params.yaml and dvc.yaml.

    Returns:
        The MLflow run ids and the per-point metrics.
    """
    root = Path(root).resolve()
    paths = style_transfer.StyleTransferPaths().under(root)
    child_run_ids = []
    with technique_run(style_transfer.TECHNIQUE, profile, root, validate) as run:
        for stage in run.stages:
            run.run_stage(stage)
            if stage.name == "style_transfer_stylize":
                child_run_ids = log_stylizations(run.run_id, run.experiment_id, paths)
    metrics = json.loads(paths.metrics.read_text())
    points = json.loads((paths.results / "results.json").read_text())["points"]
    summary = "\n".join(
        [
            "## Neural style transfer",
            f"- MLflow run `{run.run_id}` ({run.tracking_uri}); comparison grid `{paths.results / 'grid.png'}`",
            *(
                f"- `{point['name']}`: loss {values['final_loss']:.4g} (content {values['final_content_loss']:.3g}, "
                f"style {values['final_style_loss']:.3g}, TV {values['final_total_variation_loss']:.3g}) after "
                f"{point['steps']} steps, {values['seconds']:.1f} s"
                for point, values in zip(points, metrics.values())
            ),
        ]
    )
    return run.publish(summary, "style-transfer-summary", child_run_ids=child_run_ids, metrics=metrics)


if __name__ == "__main__":
    raise SystemExit(run_cli(style_transfer_flow, validate))
