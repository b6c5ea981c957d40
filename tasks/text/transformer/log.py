"""What the word-level Transformer's steps wrote, logged to MLflow (called by the flow, never by a
stage): the training history, per-epoch samples and model on the parent run, one child run per
sampler with the char-LSTM's text metrics, and the model with its vocabulary as a pyfunc text
generator for the model registry."""

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
from tasks.text.log import log_history_and_epoch_samples, monitored_loss
from tasks.text.transformer.params import TransformerPaths


def log_training(run_id: str, paths: TransformerPaths) -> dict[str, float]:
    """Per-epoch loss and perplexity, the training summary, the per-epoch samples, the Keras model."""
    import tasks.text.transformer.model  # noqa: F401  registers its layers, to load the model for logging

    metrics = log_history_and_epoch_samples(run_id, paths.history, paths.train_metrics, paths.epoch_samples)
    vocabulary = json.loads((paths.prepared / "vocabulary.json").read_text(encoding="utf-8"))["tokens"]
    signature = ModelSignature(  # any batch, any length -> next-word distribution at every position
        Schema([TensorSpec(np.dtype("int32"), (-1, -1), "word_ids")]),
        Schema([TensorSpec(np.dtype("float32"), (-1, -1, len(vocabulary)), "next_word")]),
    )
    tracking.log_keras_model(run_id, paths.model, name="model", signature=signature)
    mlflow.log_artifact(str(paths.prepared / "vocabulary.json"), run_id=run_id)
    return metrics


def log_samples(parent_run_id: str, experiment_id: str, paths: TransformerPaths) -> list[str]:
    """One child run per sampler (a temperature, or top-k / top-p) with its texts and metrics."""
    child_ids = []
    for result in json.loads((paths.samples / "samples.json").read_text(encoding="utf-8")):
        with tracking.start_child_run(parent_run_id, experiment_id, result["label"]) as child:
            sampler = result["sampler"]
            mlflow.log_params(
                {
                    "temperature": sampler["temperature"],
                    "top_k": sampler["top_k"] or "off",
                    "top_p": sampler["top_p"] or "off",
                    "num_words": len(result["texts"][0]["text"].split()),
                    "prompts": " | ".join(text["prompt"] for text in result["texts"])[:500],
                }
            )
            mlflow.log_metrics(result["metrics"])
            mlflow.log_text(
                "\n\n".join(f"{text['prompt']} {text['text']}" for text in result["texts"]), "sample.txt"
            )
            child_ids.append(child.info.run_id)
    metrics = json.loads(paths.sample_metrics.read_text())
    tracking.log_metrics(parent_run_id, {"sample.words_per_second": metrics["words_per_second"]})
    return child_ids


def log_serving_model(run_id: str, paths: TransformerPaths) -> champion.Candidate:
    """The trained model and its vocabulary as a pyfunc text generator (prompt, temperature, length
    -> text) on the parent run: the registry's candidate, scored by the kept model's validation loss (NaN
    without a validation split: then it never becomes champion)."""
    from tasks.text.transformer import serving  # loads Keras: only a flow run whose training ran gets here

    model, md5 = champion.log_pyfunc_model(
        run_id,
        serving.TransformerGenerator(),
        {"model": paths.model, "vocabulary": paths.prepared / "vocabulary.json"},
        signature=serving.SIGNATURE,
        input_example=serving.input_example(),
    )
    metrics = json.loads(paths.train_metrics.read_text())
    return champion.Candidate(
        model.model_id, model.source_run_id, md5, float(metrics.get("kept_val_loss", math.nan))
    )


def summary(paths: TransformerPaths, train_metrics: dict[str, Any], run_id: str, tracking_uri: str) -> str:
    """The flow's markdown summary: where the outputs are, the kept model and its perplexity, sampling speed, samples."""
    samples = json.loads((paths.samples / "samples.json").read_text(encoding="utf-8"))
    words_per_second = json.loads(paths.sample_metrics.read_text())["words_per_second"]
    monitored = monitored_loss(train_metrics)
    perplexity = train_metrics[f"kept_{monitored.replace('loss', 'perplexity')}"]
    lines = [
        "## Word-level Transformer",
        f"- MLflow run `{run_id}` ({tracking_uri})",
        f"- model: `{paths.model}`; samples: `{paths.samples}`; metrics: `{paths.train_metrics}`, "
        f"`{paths.sample_metrics}`",
        f"- {kept_model_line(train_metrics, monitored)}: perplexity {perplexity:.1f}",
        f"- sampling: {words_per_second:,.0f} words/s",
        "",
    ]
    for result in samples:
        first = result["texts"][0]
        snippet = f"{first['prompt']} {first['text']}"[:160]
        lines.append(
            f"- {result['label']} (entropy {result['metrics']['entropy_bits']:.2f} bits, "
            f"distinct-2 {result['metrics']['distinct_2']:.2f}): {snippet!r}"
        )
    return "\n".join(lines)
