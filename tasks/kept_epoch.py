"""One line on which epoch's model training kept and why, read from the metrics training wrote
(tasks/training.py's `KeptEpoch` and `EpochChoice.outcome`): the step's log, the MLflow tag and the
flow's summary say it alike. No TensorFlow, no MLflow: both sides import it."""

from __future__ import annotations

from collections.abc import Mapping

ENDINGS = {
    "diverged_at_epoch": "loss became NaN in epoch {}",
    "blown_up_at_epoch": "loss blew up in epoch {}",
    "stopped_early_at_epoch": "stopped early after epoch {} (no better {monitored} for `patience` epochs)",
}


def kept_model_line(metrics: Mapping[str, float], monitored: str) -> str:
    """From the `kept_*`, `best_*` and `final_*` metrics of `monitored`, and the failure or early
    stop that ended training, if any."""
    kept, best, final = (int(metrics.get(f"{which}_epoch", 0)) for which in ("kept", "best", "final"))
    if not kept:
        return "no model kept: no epoch ended with finite losses"
    value = metrics[f"kept_{monitored}"]
    if kept == best:
        line = f"kept the model of epoch {kept}, the lowest {monitored} ({value:.4g})"
        if final != kept:
            line += f"; the last epoch, {final}, reached {metrics[f'final_{monitored}']:.4g}"
    else:
        line = (
            f"kept the model of epoch {kept}, the last to end healthy ({monitored} {value:.4g}; keep: last); "
            f"the lowest was {metrics[f'best_{monitored}']:.4g} at epoch {best}"
        )
    notes = [
        text.format(int(metrics[key]), monitored=monitored)
        for key, text in ENDINGS.items()
        if metrics.get(key)
    ]
    return line + "".join(f"; {note}" for note in notes)
