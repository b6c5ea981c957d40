"""What the char-LSTM's steps wrote, logged to MLflow (called by the flow, never by a stage): the
training history, per-epoch samples and model on the parent run, one child run per temperature, and
the trained model as a pyfunc text generator for the model registry."""

from __future__ import annotations

import json
import math
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from tasks import champion, tracking
from tasks.kept_epoch import kept_model_line
from tasks.text.char_lstm.params import TextPaths
from tasks.text.corpus import corpus_seed, load_prepared, read_vocabulary
from tasks.text.log import log_history_and_epoch_samples, monitored_loss


def log_training(run_id: str, paths: TextPaths) -> dict[str, float]:
    """Per-epoch losses, the training summary, the per-epoch samples and the model."""
    metrics = log_history_and_epoch_samples(run_id, paths.history, paths.train_metrics, paths.epoch_samples)
    vocab_size = read_vocabulary(paths.prepared).size  # the model's output size
    signature = ModelSignature(  # any batch, any sequence length -> next-character distribution
        Schema([TensorSpec(np.dtype("int32"), (-1, -1), "char_ids")]),
        Schema([TensorSpec(np.dtype("float32"), (-1, vocab_size), "next_char")]),
    )
    tracking.log_keras_model(run_id, paths.model, name="model", signature=signature)
    return metrics


def log_samples(parent_run_id: str, experiment_id: str, paths: TextPaths) -> list[str]:
    """One child run per temperature with its text and metrics, for side-by-side comparison."""
    child_ids = []
    for result in json.loads((paths.samples / "samples.json").read_text(encoding="utf-8")):
        with tracking.start_child_run(
            parent_run_id, experiment_id, f"temperature={result['temperature']:g}"
        ) as child:
            mlflow.log_params(
                {
                    "temperature": result["temperature"],
                    "num_chars": len(result["text"]),
                    "seed_text": result["seed"][:500],
                }
            )
            mlflow.log_metrics(result["metrics"])
            mlflow.log_text(result["seed"] + result["text"], "sample.txt")
            child_ids.append(child.info.run_id)
    metrics = json.loads(paths.sample_metrics.read_text())
    tracking.log_metrics(parent_run_id, {"sample.chars_per_second": metrics["chars_per_second"]})
    return child_ids


def log_serving_model(run_id: str, paths: TextPaths) -> champion.Candidate:
    """The trained model and its vocabulary as a pyfunc text generator (prompt, temperature, length
    -> text) on the parent run: the registry's candidate, scored by its best validation loss (NaN
    without a validation split: then it never becomes champion)."""
    from tasks.text.char_lstm import serving  # loads Keras: only a flow run whose training ran gets here

    vocabulary, train_ids, _ = load_prepared(paths.prepared)
    prompt = corpus_seed(train_ids, vocabulary, min(20, len(train_ids) - 1), seed=0)
    model, md5 = champion.log_pyfunc_model(
        run_id,
        serving.CharLstmGenerator(),
        {"model": paths.model, "vocabulary": paths.prepared / "vocabulary.json"},
        signature=serving.SIGNATURE,
        input_example=serving.input_example(prompt),
    )
    metrics = json.loads(paths.train_metrics.read_text())
    return champion.Candidate(
        model.model_id, model.source_run_id, md5, float(metrics.get("kept_val_loss", math.nan))
    )


def summary(paths: TextPaths, train_metrics: dict[str, Any], run_id: str, tracking_uri: str) -> str:
    """The flow's markdown summary: where the outputs are, the kept model's epoch and loss, and the samples."""
    samples = json.loads((paths.samples / "samples.json").read_text(encoding="utf-8"))
    lines = [
        "## Text generation",
        f"- MLflow run `{run_id}` ({tracking_uri})",
        f"- model: `{paths.model}`; samples: `{paths.samples}`; metrics: `{paths.train_metrics}`, "
        f"`{paths.sample_metrics}`",
        f"- {kept_model_line(train_metrics, monitored_loss(train_metrics))}",
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
