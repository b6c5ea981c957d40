"""The text-generation flow end to end on a tiny corpus: DVC stages, MLflow runs, artifacts,
re-runs that skip what is up to date, and bad input that fails cleanly and loses nothing."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from flows.text import text_generation
from tasks.pipeline import StageFailed
from tests.flows.conftest import dvc, make_repo_copy, params_of, write_params

pytestmark = pytest.mark.slow
STAGES = ["text_download", "text_prepare", "text_train", "text_sample"]


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """Run the flow once in a repo copy, into a temporary MLflow store."""
    root = make_repo_copy(tmp_path_factory.mktemp("text-flow") / "repo")
    store = root.parent / "mlflow"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"text-{uuid.uuid4().hex[:8]}")
        result = text_generation(root=root)
        yield root, result, patch


def parent_runs(experiment_id: str):
    runs = mlflow.search_runs([experiment_id], output_format="list", order_by=["start_time ASC"])
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def child_runs(parent_run_id: str, experiment_id: str):
    return mlflow.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", output_format="list"
    )


def test_flow_runs_every_dvc_stage_and_leaves_nothing_to_reproduce(flow_run):
    root, result, _ = flow_run
    assert result["stages_run"] == STAGES
    status = dvc(root, "status", "--json", "text_sample")  # text_sample and all it depends on
    assert status.returncode == 0 and json.loads(status.stdout) == {}
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == set(STAGES)
    # Everything the steps wrote is a DVC output: git sees no stray files, only the new lock.
    untracked = subprocess_lines(root, "git", "status", "--porcelain")
    assert untracked == ["?? dvc.lock"]


def test_parent_run_has_params_epoch_losses_samples_and_a_loadable_model(flow_run):
    root, result, _ = flow_run
    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    params = params_of(root)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["text.train.epochs"] == str(params["text"]["train"]["epochs"])
    assert parent.data.params["text.data.maxlen"] == "10"
    for key in ("loss", "val_loss", "val_bits_per_char"):
        history = client.get_metric_history(parent.info.run_id, key)
        assert [metric.step for metric in history] == [1, 2]
        assert all(np.isfinite(metric.value) for metric in history)
    losses = [m.value for m in client.get_metric_history(parent.info.run_id, "val_loss")]
    assert parent.data.metrics["train.best_val_loss"] == pytest.approx(min(losses))
    kept = int(parent.data.metrics["train.kept_epoch"])  # keep: best, the default
    assert kept == 1 + losses.index(min(losses)) and parent.data.metrics["train.final_epoch"] == 2
    assert parent.data.tags["train.kept_model"].startswith(f"kept the model of epoch {kept}")
    artifacts = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert {"epoch_samples.json", "epoch_samples"} <= artifacts
    epoch_files = [a.path for a in client.list_artifacts(parent.info.run_id, "epoch_samples")]
    assert epoch_files == ["epoch_samples/epoch_001.txt", "epoch_samples/epoch_002.txt"]

    model = mlflow.keras.load_model(parent.data.tags["model_uri"])
    vocabulary = json.loads((root / "data/text/prepared/vocabulary.json").read_text())["chars"]
    probabilities = model.predict(np.zeros((1, 10), np.int32), verbose=0)
    assert probabilities.shape == (1, len(vocabulary))
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)


def test_parent_run_is_tagged_with_commit_and_data_hashes(flow_run):
    root, result, _ = flow_run
    tags = mlflow.MlflowClient().get_run(result["run_id"]).data.tags
    head = subprocess_lines(root, "git", "rev-parse", "HEAD")[0]
    assert tags["git.commit"] == head
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    corpus_md5 = lock["text_download"]["outs"][0]["md5"]
    assert tags["data.data/text/corpus.txt.md5"] == corpus_md5
    assert tags["dvc.stages_run"] == ",".join(STAGES)


def test_one_child_run_per_temperature_with_text_and_metrics(flow_run):
    root, result, _ = flow_run
    temperatures = params_of(root)["text"]["sample"]["temperatures"]
    children = child_runs(result["run_id"], result["experiment_id"])
    assert sorted(float(run.data.params["temperature"]) for run in children) == sorted(temperatures)
    client = mlflow.MlflowClient()
    entropies = {}
    for child in children:
        assert child.info.status == "FINISHED"
        metrics = child.data.metrics
        assert {"entropy_bits", "corpus_word_share", "distinct_1", "distinct_2", "repetition_rate"} <= set(
            metrics
        )
        assert 0.0 <= metrics["corpus_word_share"] <= 1.0
        sample_path = client.download_artifacts(child.info.run_id, "sample.txt")
        text = Path(sample_path).read_text(encoding="utf-8")
        assert text.startswith(child.data.params["seed_text"])
        assert len(text) == len(child.data.params["seed_text"]) + 60
        entropies[float(child.data.params["temperature"])] = metrics["entropy_bits"]
    ordered = [entropies[t] for t in sorted(entropies)]
    assert ordered == sorted(ordered) and ordered[0] < ordered[-1]


def test_dvc_metrics_and_plots_work_on_the_flow_outputs(flow_run):
    root, _, _ = flow_run
    metrics = dvc(root, "metrics", "show", "--json")
    assert metrics.returncode == 0, metrics.stderr
    assert "best_val_loss" in metrics.stdout and "entropy_bits" in metrics.stdout
    plots = dvc(root, "plots", "show", "--out", "dvc_plots")
    assert plots.returncode == 0, plots.stderr
    assert (root / "dvc_plots" / "index.html").is_file()


def test_rerun_skips_up_to_date_stages_and_sampling_change_reruns_only_sampling(flow_run):
    root, first, _ = flow_run
    again = text_generation(root=root)
    assert again["stages_run"] == []
    assert again["run_id"] != first["run_id"]
    # Nothing retrained: the run points at the model logged by the first, nothing is uploaded again.
    client = mlflow.MlflowClient()
    first_tags, again_tags = (
        client.get_run(first["run_id"]).data.tags,
        client.get_run(again["run_id"]).data.tags,
    )
    assert again_tags["model_uri"] == first_tags["model_uri"]
    assert again_tags["model_reused_from_run"] == first["run_id"]
    # The Keras model and its pyfunc generator for the registry ("serving"), each logged once.
    logged = mlflow.search_logged_models([first["experiment_id"]], output_format="list")
    assert sorted(model.name for model in logged) == ["model", "serving"]
    assert again_tags["champion.outcome"] == "not registered"
    assert mlflow.MlflowClient().get_run(again["run_id"]).data.metrics[
        "train.best_val_loss"
    ] == pytest.approx(first["train_metrics"]["best_val_loss"])

    params = params_of(root)
    params["text"]["sample"]["temperatures"] = [0.3, 0.9]
    write_params(root, params)
    changed = text_generation(root=root)
    assert changed["stages_run"] == ["text_sample"]
    children = child_runs(changed["run_id"], changed["experiment_id"])
    assert sorted(float(run.data.params["temperature"]) for run in children) == [0.3, 0.9]


def test_seed_outside_vocabulary_fails_cleanly_and_keeps_earlier_outputs(flow_run):
    root, result, _ = flow_run
    samples = root / "outputs/text/samples"
    before = {path.name: path.read_bytes() for path in samples.iterdir()}
    params = params_of(root)
    original = dict(params["text"]["sample"])
    params["text"]["sample"]["seed_text"] = "zebra§µ"
    write_params(root, params)
    try:
        with pytest.raises(StageFailed, match="outside the corpus vocabulary: '.*§.*µ") as failure:
            text_generation(root=root)
        assert "Traceback" not in str(failure.value)
    finally:
        params["text"]["sample"] = original
        write_params(root, params)
    assert {path.name: path.read_bytes() for path in samples.iterdir()} == before
    runs = parent_runs(result["experiment_id"])
    assert runs[-1].info.status == "FAILED"
    assert all(run.info.status == "FINISHED" for run in runs[:-1])


def test_invalid_temperature_is_rejected_before_anything_runs(flow_run):
    root, result, _ = flow_run
    params = params_of(root)
    params["text"]["sample"]["temperatures"] = [0.5, 0.0]
    write_params(root, params)
    before = len(mlflow.search_runs([result["experiment_id"]], output_format="list"))
    try:
        with pytest.raises(ValueError, match=r"text\.sample\.temperatures\.1: .*greater than 0"):
            text_generation(root=root)
    finally:
        params["text"]["sample"]["temperatures"] = [0.2, 0.5, 1.0, 1.2]
        write_params(root, params)
    assert len(mlflow.search_runs([result["experiment_id"]], output_format="list")) == before


@pytest.mark.parametrize(
    ("corpus_text", "message"),
    [("", "is empty"), ("abc def", "too short for maxlen=10")],
)
def test_unusable_corpus_gets_one_clear_error_and_a_failed_run(tmp_path, mlflow_store, corpus_text, message):
    root = make_repo_copy(tmp_path / "repo", corpus_text=corpus_text)
    with pytest.raises(StageFailed, match=message):
        text_generation(root=root)
    runs = mlflow.search_runs(experiment_names=[_experiment()], output_format="list")
    assert [run.info.status for run in runs] == ["FAILED"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///no/such/corpus.txt", "file:///no/such/corpus.txt: no such file"),
        # what a machine without a network sees: the host name does not resolve (.invalid never does)
        ("https://gendl-test.invalid/corpus.txt", "could not download https://gendl-test.invalid/corpus.txt"),
    ],
    ids=["missing-file", "no-network"],
)
def test_a_corpus_that_cannot_be_had_names_it_and_is_not_retried(tmp_path, mlflow_store, url, message):
    root = make_repo_copy(tmp_path / "repo")
    params = params_of(root)
    params["text"]["data"]["url"] = url
    write_params(root, params)
    with pytest.raises(StageFailed, match=re.escape(message)) as failure:
        text_generation(root=root)
    assert not failure.value.retryable
    assert url.startswith("file:") or "KERAS_HOME" in str(failure.value)


def subprocess_lines(root: Path, *command: str) -> list[str]:
    import subprocess

    output = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True).stdout
    return [line for line in output.splitlines() if line.strip()]


def _experiment() -> str:
    import os

    return os.environ["MLFLOW_EXPERIMENT_NAME"]
