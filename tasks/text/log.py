"""What both text generators' training steps wrote, logged to MLflow the same way, so the
character-level and word-level runs compare side by side: per-epoch losses, the training summary,
and the samples generated after each epoch (entropy per temperature, a table, a text file per epoch)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import mlflow

from tasks import tracking
from tasks.kept_epoch import kept_model_line
from tasks.storage import read_history


def log_history_and_epoch_samples(
    run_id: str, history: Path, train_metrics: Path, epoch_samples: Path
) -> dict[str, float]:
    """The per-epoch history, the training summary as `train.*` metrics (the kept, best and final
    epoch's), the kept model's epoch and why as tag `train.kept_model`, and the epoch samples."""
    tracking.log_metric_rows(run_id, read_history(history), step_key="epoch")
    metrics = json.loads(train_metrics.read_text())
    tracking.log_metrics(run_id, {f"train.{key}": value for key, value in metrics.items()})
    tracking.set_tags(run_id, {"train.kept_model": kept_model_line(metrics, monitored_loss(metrics))})
    records = json.loads(epoch_samples.read_text(encoding="utf-8"))
    if records:
        log_epoch_samples(run_id, records)
    return metrics


def monitored_loss(train_metrics: Mapping[str, float]) -> str:
    """The loss the kept epoch was chosen by: the validation loss, or the training loss without one."""
    return "val_loss" if "kept_val_loss" in train_metrics else "loss"


def log_epoch_samples(run_id: str, epoch_samples: list[dict]) -> None:
    """Entropy per epoch and temperature, the samples as a table, and one text file per epoch."""
    tracking.log_metric_rows(  # MLflow groups "epoch_samples/..." charts together
        run_id,
        [
            {
                "epoch": r["epoch"],
                f"epoch_samples/temperature_{r['temperature']:g}/entropy_bits": r["entropy_bits"],
            }
            for r in epoch_samples
        ],
    )
    mlflow.log_table(
        {key: [record[key] for record in epoch_samples] for key in ("epoch", "temperature", "text")},
        "epoch_samples.json",
        run_id=run_id,
    )
    for epoch in sorted({record["epoch"] for record in epoch_samples}):
        mlflow.log_text(
            "\n\n".join(
                f"--- temperature {record['temperature']:g}\n{record['text']}"
                for record in epoch_samples
                if record["epoch"] == epoch
            ),
            f"epoch_samples/epoch_{epoch:03d}.txt",
            run_id=run_id,
        )
