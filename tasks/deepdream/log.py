"""What DeepDream sends to MLflow and the flow's summary, called by the flow after the dream step
(no DVC stage imports this module: changing what is logged re-runs nothing)."""

from __future__ import annotations

import json

import mlflow

from tasks import tracking
from tasks.deepdream.params import DeepDreamPaths


def log_dreams(parent_run_id: str, experiment_id: str, paths: DeepDreamPaths) -> list[str]:
    """The comparison grid and the input on the parent run; one child run per layer setting with
    its losses per step (and per octave) and its dream."""
    client = mlflow.MlflowClient()
    summary = json.loads((paths.dreams / "results.json").read_text())
    client.log_artifact(parent_run_id, str(paths.dreams / "grid.png"))
    client.log_artifact(parent_run_id, str(paths.image), "input")
    child_ids = []
    for result in summary["settings"]:
        with tracking.start_child_run(parent_run_id, experiment_id, result["name"]) as child:
            run_id, losses = child.info.run_id, result["losses"]
            layers = {f"layer.{layer}": weight for layer, weight in result["setting"].items()}
            tracking.log_params(run_id, {"backbone": summary["backbone"], **layers})
            tracking.log_metric_rows(
                run_id,
                [
                    {"step": index, "loss": record["loss"], f"loss_octave_{record['octave']}": record["loss"]}
                    for index, record in enumerate(losses)
                ],
                step_key="step",
            )
            tracking.log_metrics(
                run_id, {"final_loss": losses[-1]["loss"], "seconds": result["seconds"], "steps": len(losses)}
            )
            client.log_artifact(run_id, str(paths.dreams / result["image"]))
            child_ids.append(run_id)
    return child_ids


def summary(paths: DeepDreamPaths, run_id: str, tracking_uri: str) -> str:
    """The flow run's markdown summary: each layer setting's loss, steps and time per octave."""
    metrics = json.loads(paths.metrics.read_text())
    settings = json.loads((paths.dreams / "results.json").read_text())["settings"]
    lines = [
        "## DeepDream",
        f"- MLflow run `{run_id}` ({tracking_uri}); comparison grid `{paths.dreams / 'grid.png'}`",
    ]
    for setting, values in zip(settings, metrics.values()):
        lines.append(
            f"- `{setting['name']}`: loss {values['first_loss']:.3g} -> {values['final_loss']:.3g} in "
            f"{values['steps']} steps, {values['mean_seconds_per_octave']:.1f} s per octave"
        )
    return "\n".join(lines)
