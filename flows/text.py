"""Text generation flow: download -> prepare -> train -> sample, as dvc.yaml defines them,
tracked in MLflow as one parent run with one child run per sampling temperature.

    python -m flows.text [--profile quick]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, run_cli
from flows.technique_run import technique_run
from tasks import text, tracking
from tasks.params import parse_section
from tasks.runtime import RuntimeParams

log_training = task(text.log_training, name="log-training")
log_samples = task(text.log_samples, name="log-samples")


def validate(params: dict[str, Any]) -> None:
    """Fail before anything runs if the sections this flow reads are invalid."""
    parse_section(params, "text", text.TextParams)
    parse_section(params, "runtime", RuntimeParams)
    parse_section(params, "tracking", tracking.TrackingParams)


@flow(name="text-generation")
def text_generation(profile: str | None = None, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Run the text-generation stages through DVC and log their outputs to MLflow.

    Args:
        profile: name of a params overlay in profiles/ (e.g. "quick"); None = params.yaml as is.
        root: repo root holding params.yaml and dvc.yaml.

    Returns:
        The MLflow run ids and the training and sampling results.
    """
    root = Path(root).resolve()
    paths = text.TextPaths().under(root)
    child_run_ids, train_metrics = [], {}
    with technique_run(text.TECHNIQUE, profile, root, validate) as run:
        for stage in run.stages:
            run.run_stage(stage)
            if stage.name == "text_train":
                train_metrics = log_training(run.run_id, paths)
            elif stage.name == "text_sample":
                child_run_ids = log_samples(run.run_id, run.experiment_id, paths)
    summary = summarize(paths, train_metrics, run.run_id, run.tracking_uri)
    return run.publish(
        summary, "text-generation-summary", child_run_ids=child_run_ids, train_metrics=train_metrics
    )


def summarize(paths: text.TextPaths, train_metrics: dict[str, Any], run_id: str, tracking_uri: str) -> str:
    import json

    samples = json.loads((paths.samples / "samples.json").read_text(encoding="utf-8"))
    best = train_metrics.get("best_val_loss", train_metrics.get("best_loss"))
    lines = [
        "## Text generation",
        f"- MLflow run `{run_id}` ({tracking_uri})",
        f"- model: `{paths.model}`; samples: `{paths.samples}`; metrics: `{paths.train_metrics}`, "
        f"`{paths.sample_metrics}`",
        f"- best validation loss {best:.4f} nats "
        f"({best / 0.6931471805599453:.3f} bits/char) at epoch {train_metrics.get('best_epoch')}"
        + (" (training diverged: stopped at the last good epoch)" if train_metrics.get("diverged") else ""),
        "",
        f"Seed: `{samples[0]['seed']!r}`" if samples else "",
    ]
    for result in samples:
        snippet = result["text"][:160].replace("\n", " ")
        lines.append(
            f"- T={result['temperature']:g} (entropy {result['metrics']['entropy_bits']:.2f} bits, "
            f"corpus words {result['metrics']['corpus_word_share']:.0%}): {snippet!r}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(run_cli(text_generation, validate))
