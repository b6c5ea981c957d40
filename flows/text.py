"""Text generation flow: download -> prepare -> train -> sample, as dvc.yaml defines them,
tracked in MLflow as one parent run with one child run per sampling temperature; a model that
trained is registered and may become the champion (tasks/champion.py).

    python -m flows.text [--profile quick]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, run_cli
from flows.registry import TECHNIQUES
from flows.technique_run import SweepPoint, technique_run
from tasks.text.char_lstm import log
from tasks.text.char_lstm.params import TextPaths

log_training = task(log.log_training, name="log-training")
log_samples = task(log.log_samples, name="log-samples")


@flow(name="text-generation")
def text_generation(
    profile: str | None = None, root: Path = REPO_ROOT, sweep: SweepPoint | None = None
) -> dict[str, Any]:
    """Run the text-generation stages through DVC and log their outputs to MLflow."""
    with technique_run(TECHNIQUES["text"], profile, root, sweep) as run:
        paths = run.paths
        run.run_stages(through="text_train")
        train_metrics = log_training(run.run_id, paths)
        decision = run.promote(log.log_serving_model, run.run_id, paths)
        run.run_stages(through="text_sample")
        child_run_ids = log_samples(run.run_id, run.experiment_id, paths)
    summary = summarize(paths, train_metrics, run.run_id, run.tracking_uri)
    return run.publish(
        f"{summary}\n{decision.summary()}",
        "text-generation-summary",
        child_run_ids=child_run_ids,
        train_metrics=train_metrics,
        champion=decision.tags(),
    )


def summarize(paths: TextPaths, train_metrics: dict[str, Any], run_id: str, tracking_uri: str) -> str:
    samples = json.loads((paths.samples / "samples.json").read_text(encoding="utf-8"))
    best = train_metrics.get("best_val_loss", train_metrics.get("best_loss"))
    lines = [
        "## Text generation",
        f"- MLflow run `{run_id}` ({tracking_uri})",
        f"- model: `{paths.model}`; samples: `{paths.samples}`; metrics: `{paths.train_metrics}`, "
        f"`{paths.sample_metrics}`",
        f"- best validation loss {best:.4f} nats "
        f"({best / math.log(2.0):.3f} bits/char) at epoch {train_metrics.get('best_epoch')}"
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
    raise SystemExit(run_cli(text_generation, ["text"]))
