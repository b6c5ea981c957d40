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
from flows.registry import TECHNIQUES
from flows.technique_run import technique_run
from tasks import storage
from tasks.style_transfer import log
from tasks.style_transfer.params import StyleTransferPaths

log_stylizations = task(log.log_stylizations, name="log-stylizations")


@flow(name="style-transfer")
def style_transfer_flow(
    profile: str | None = None,
    root: Path = REPO_ROOT,
    overrides: dict[str, Any] | None = None,
    sweep: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the style transfer stages through DVC and log every grid point's image to MLflow.

    Args:
        profile: name of a params overlay in profiles/ (e.g. "quick"); None = params.yaml as is.
        root: repo root holding params.yaml and dvc.yaml.
        overrides: dotted params set over the profile, e.g. {"vae.train.beta": [0.5]} (a sweep's point).
        sweep: {"id", "run_id", "point"} of the sweep this run is a point of (flows/sweep.py).

    Returns:
        The MLflow run ids and the per-point metrics.
    """
    root = Path(root).resolve()
    paths = storage.under(root, StyleTransferPaths())
    with technique_run(TECHNIQUES["style_transfer"], profile, root, overrides, sweep) as run:
        run.run_stages(through="style_transfer_stylize")
        child_run_ids = log_stylizations(run.run_id, run.experiment_id, paths)
    metrics = json.loads(paths.metrics.read_text())
    points = json.loads((paths.results / "results.json").read_text())["points"]
    summary = summarize(points, paths, run.run_id, run.tracking_uri)
    return run.publish(summary, "style-transfer-summary", child_run_ids=child_run_ids, metrics=metrics)


def summarize(points: list[dict[str, Any]], paths: StyleTransferPaths, run_id: str, tracking_uri: str) -> str:
    lines = [
        "## Neural style transfer",
        f"- MLflow run `{run_id}` ({tracking_uri}); comparison grid `{paths.results / 'grid.png'}`",
    ]
    for point in points:
        final = point["metrics"]
        lines.append(
            f"- `{point['label']}`: loss {final['final_loss']:.4g} (content {final['final_content_loss']:.3g}, "
            f"style {final['final_style_loss']:.3g}, TV {final['final_total_variation_loss']:.3g}) after "
            f"{point['steps']} steps, {final['seconds']:.1f} s"
        )
    return "\n".join(lines)

if __name__ == "__main__":
    raise SystemExit(run_cli(style_transfer_flow, ["style_transfer"]))
