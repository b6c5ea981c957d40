"""MLflow helpers every technique uses: where runs go, and logging by explicit run id.

Runs are addressed by id rather than through MLflow's thread-local "active run", because
Prefect may run a task in another thread than the flow that opened the run.
"""

from __future__ import annotations

import gc
import importlib.metadata
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pydantic
from mlflow.entities import Metric, Param, RunTag

from tasks import storage
from tasks.params import Params, parse_yaml

DEFAULT_STORE_DIR = "mlflow"  # under the repo root: mlflow.db and artifacts/
_BATCH_LIMIT = 100  # MLflow accepts at most 100 params or tags per log_batch call


class TrackingParams(Params):
    uri: str  # "" = sqlite store in <repo>/mlflow/; env MLFLOW_TRACKING_URI wins
    experiment_prefix: str = pydantic.Field(min_length=1)  # experiments are <prefix>-<technique>
    # A new version becomes champion only if its metric is better by this share (0.01 = 1%).
    promotion_margin: float = pydantic.Field(ge=0.0, lt=1.0, allow_inf_nan=False)


def resolve_tracking_uri(configured: str, root: Path) -> str:
    """The absolute tracking URI to use: env, then params, then the embedded SQLite default.

    Relative SQLite paths are made absolute against the repo root, because DVC may run a
    stage in another directory and a relative path would silently create a second database.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if not uri:
        return f"sqlite:///{(root / DEFAULT_STORE_DIR / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        return f"sqlite:///{(path if path.is_absolute() else root / path).resolve()}"
    if "://" not in uri or uri.startswith("file:"):
        raise ValueError(
            f"MLflow tracking URI {uri!r} is a file store, which MLflow 3 no longer supports: "
            "use sqlite:///<absolute path>.db or an http(s):// tracking server"
        )
    return uri


def experiment_name(prefix: str, technique: str) -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"{prefix}-{technique}"


def setup_experiment(tracking_uri: str, name: str) -> str:
    """Point MLflow at `tracking_uri` and return the id of experiment `name`, creating it.

    With a local SQLite store the artifact location is set explicitly beside the database
    (MLflow would otherwise put artifacts under the current directory).
    """
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        artifact_location = (database.parent / "artifacts").as_uri()
    # The experiment kind makes the MLflow 3 UI open it in its model-training view, not GenAI's.
    kind = {"mlflow.experimentKind": "custom_model_development"}
    return mlflow.create_experiment(name, artifact_location=artifact_location, tags=kind)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"text": {"train": {"epochs": 3}}} -> {"text.train.epochs": "3"}."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = str(value)
    return flat


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(key, value[:6000]) for key, value in flatten(params).items()]
    client = mlflow.MlflowClient()
    for start in range(0, len(items), _BATCH_LIMIT):
        client.log_batch(run_id, params=items[start : start + _BATCH_LIMIT])


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(key, str(value)) for key, value in tags.items()]
    client = mlflow.MlflowClient()
    for start in range(0, len(items), _BATCH_LIMIT):
        client.log_batch(run_id, tags=items[start : start + _BATCH_LIMIT])


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite metrics at `step`; NaN/inf are skipped (MLflow would store them as-is)."""
    log_metric_rows(run_id, [{**metrics}], step_key=None, first_step=step)


def log_metric_rows(
    run_id: str,
    rows: Iterable[Mapping[str, float]],
    step_key: str | None = "epoch",
    first_step: int = 0,
) -> None:
    """Log one row per step (for example one per epoch); the step is `row[step_key]`."""
    timestamp = int(time.time() * 1000)
    metrics = []
    for index, row in enumerate(rows):
        step = int(row[step_key]) if step_key else first_step + index
        for key, value in row.items():
            if key != step_key and math.isfinite(float(value)):
                metrics.append(Metric(key, float(value), timestamp, step))
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def import_keras_in_background() -> None:
    """Start importing Keras and MLflow's keras flavor (~4 s) in a thread of this process, once, for
    `log_keras_model` later: a flow starts it while a stage runs and the flow's process only waits.
    An import that meets this one in progress waits for it (Python's import lock)."""
    global _keras_import
    if _keras_import is None and "keras" not in sys.modules:
        _keras_import = threading.Thread(target=_import_keras, name="import-keras", daemon=True)
        _keras_import.start()


_keras_import: threading.Thread | None = None


def _import_keras() -> None:
    import keras  # noqa: F401
    import mlflow.keras  # noqa: F401

    # Keras's and TensorFlow's objects, kept for the process's life, out of each later collection's walk.
    gc.freeze()


def log_keras_model(run_id: str, path: Path, name: str = "model", **kwargs) -> str:
    """Log the Keras model saved at `path` on run `run_id` (keras flavor), once per file content
    (see `log_model_once`); returns its model URI. The requirements are the installed keras,
    tensorflow and numpy: MLflow would otherwise infer them by loading the model in a fresh
    interpreter, ~5 s per model."""
    import keras
    import mlflow.keras  # flavor module; imported here to keep module import light

    kwargs.setdefault(
        "pip_requirements",
        [f"{package}=={importlib.metadata.version(package)}" for package in ("keras", "tensorflow", "numpy")],
    )
    logged = log_model_once(
        run_id, name, md5_of(path), flavor=mlflow.keras, model=keras.models.load_model(path), **kwargs
    )
    return logged.model_uri


def log_model_once(run_id: str, name: str, md5: str, flavor, **kwargs):
    """Log a model named `name` on run `run_id` with `mlflow.models.Model.log(flavor=..., **kwargs)`,
    unless the run's experiment already holds one of that name and content (`md5` of its files, tag
    `gendl.md5`): then nothing is uploaded and the run points at that one. Either way the run is
    tagged `<name>_uri` (and `<name>_reused_from_run` when reused). Returns the LoggedModel.

    So a flow run whose training stage DVC skipped does not log the same weights again; one that
    trained logs the new files.
    """
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    existing = [
        model
        for model in mlflow.search_logged_models(
            experiment_ids=[experiment_id],
            filter_string=f"name = '{name}' AND tags.`gendl.md5` = '{md5}'",
            output_format="list",
        )
        if str(model.status) in ("READY", "LoggedModelStatus.READY")
    ]
    if existing:
        set_tags(
            run_id,
            {f"{name}_uri": existing[0].model_uri, f"{name}_reused_from_run": existing[0].source_run_id},
        )
        return existing[0]
    # Created here with the run's experiment: Model.log alone would file it under the active one.
    logged_model = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, experiment_id=experiment_id, tags={"gendl.md5": md5}
    )
    info = mlflow.models.Model.log(
        artifact_path=None, name=name, flavor=flavor, run_id=run_id, model_id=logged_model.model_id, **kwargs
    )
    set_tags(run_id, {f"{name}_uri": info.model_uri})
    return mlflow.get_logged_model(logged_model.model_id)


def md5_of(path: Path) -> str:
    """The md5 DVC records for a file."""
    return storage.file_hash(path, "md5")


def start_child_run(parent_run_id: str, experiment_id: str, run_name: str):
    """A nested MLflow run under the flow's parent run (a context manager, as mlflow.start_run)."""
    return mlflow.start_run(
        run_name=run_name, experiment_id=experiment_id, parent_run_id=parent_run_id, nested=True
    )


def mark_failed(run_id: str, failure: str) -> None:
    """End run `run_id` FAILED, with the reason as its `failure` tag."""
    set_tags(run_id, {"failure": failure})
    mlflow.MlflowClient().set_terminated(run_id, status="FAILED")


def git_tags(root: Path) -> dict[str, str]:
    """Commit and dirty state of the repo, so a run can be traced back to its code."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


def dvc_lock_tags(root: Path, stages: Iterable[str]) -> dict[str, str]:
    """Content hashes of the named stages' outputs as recorded in dvc.lock ("data.<path>.md5")."""
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return {}
    lock = parse_yaml(lock_path.read_text()) or {}
    tags = {}
    for stage in stages:
        for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
            tags[f"data.{out['path']}.md5"] = out.get("md5", "")
    return tags
