"""What style transfer sends to MLflow and the flow's summary, called by the flow after the stylize
step (no DVC stage imports this module: changing what is logged re-runs nothing)."""

from __future__ import annotations

import json

import mlflow
from PIL import Image

from tasks import storage, tracking
from tasks.style_transfer.params import StyleTransferPaths


def log_stylizations(parent_run_id: str, experiment_id: str, paths: StyleTransferPaths) -> list[str]:
    """The labelled comparison grid and the inputs on the parent run; one child run per grid point
    with its losses per step, its snapshots as a stepped image and its final image."""
    client = mlflow.MlflowClient()
    summary = json.loads((paths.results / "results.json").read_text())
    client.log_artifact(parent_run_id, str(paths.results / "grid.png"))
    client.log_artifacts(parent_run_id, str(paths.inputs), "inputs")
    settings = {key: str(value) for key, value in summary["settings"].items()}
    child_ids = []
    for record in summary["points"]:
        folder, point = paths.results / record["name"], record["point"]
        with tracking.start_child_run(parent_run_id, experiment_id, record["label"]) as child:
            run_id = child.info.run_id
            layers = ",".join(point["style_layers"])
            tracking.log_params(run_id, {**point, "style_layers": layers, **settings})
            tracking.log_metric_rows(run_id, storage.read_rows(folder / "losses.csv"), step_key="step")
            tracking.log_metrics(run_id, record["metrics"])
            for snapshot in sorted((folder / "snapshots").glob("step_*.png")):
                with Image.open(snapshot) as image:
                    client.log_image(
                        run_id, image.copy(), key="generated", step=int(snapshot.stem.removeprefix("step_"))
                    )
            client.log_artifact(run_id, str(folder / "final.png"))
            child_ids.append(run_id)
    return child_ids


def summary(paths: StyleTransferPaths, run_id: str, tracking_uri: str) -> str:
    """The flow run's markdown summary: each grid point's final losses, steps and time."""
    points = json.loads((paths.results / "results.json").read_text())["points"]
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
