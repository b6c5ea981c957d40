"""The word-level Transformer flow end to end on a tiny corpus: DVC stages, MLflow runs (one child
per sampler, the char-LSTM's text metrics), the served model generating text, re-runs that skip
what is up to date, plain `dvc repro`, and bad input that fails cleanly and loses nothing."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from flows.transformer import transformer_flow
from tasks.pipeline import StageFailed
from tests.flows.conftest import (
    children_of,
    dvc,
    flow_run_in_repo_copy,
    make_repo_copy,
    params_of,
    write_params,
)

pytestmark = pytest.mark.slow
STAGES = ["transformer_download", "transformer_prepare", "transformer_train", "transformer_sample"]
TEXT_METRICS = {"entropy_bits", "corpus_word_share", "distinct_1", "distinct_2", "repetition_rate"}


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    with flow_run_in_repo_copy(tmp_path_factory.mktemp("transformer-flow"), transformer_flow) as run:
        yield run


def test_flow_runs_every_dvc_stage_and_leaves_nothing_to_reproduce(flow_run):
    root, result = flow_run
    assert result["stages_run"] == STAGES
    status = dvc(root, "status", "--json", "transformer_sample")
    assert status.returncode == 0 and json.loads(status.stdout) == {}
    untracked = subprocess.run(
        ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert [line for line in untracked if line] == ["?? dvc.lock"]


def test_parent_run_has_epoch_loss_and_perplexity_samples_and_a_loadable_model(flow_run):
    root, result = flow_run
    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["transformer.data.sequence_length"] == "8"
    history = {
        key: [
            m.value for m in sorted(client.get_metric_history(parent.info.run_id, key), key=lambda m: m.step)
        ]
        for key in ("loss", "val_loss", "perplexity", "val_perplexity")
    }
    assert all(len(values) == 2 for values in history.values())
    assert history["val_perplexity"] == pytest.approx([math.exp(v) for v in history["val_loss"]], rel=1e-5)
    assert parent.data.metrics["train.best_val_loss"] == pytest.approx(min(history["val_loss"]))
    artifacts = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert {"epoch_samples.json", "epoch_samples", "vocabulary.json"} <= artifacts
    assert parent.data.metrics["sample.words_per_second"] > 0

    import tasks.text.transformer.model  # noqa: F401  its layers, to load the Keras model

    model = mlflow.keras.load_model(parent.data.tags["model_uri"])
    vocabulary = json.loads((root / "data/transformer/prepared/vocabulary.json").read_text())["tokens"]
    probabilities = model.predict(np.array([[2, 3, 4]], np.int32), verbose=0)
    assert probabilities.shape == (1, 3, len(vocabulary))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-4)


def test_one_child_run_per_sampler_with_the_char_lstm_text_metrics(flow_run):
    root, result = flow_run
    sample = params_of(root)["transformer"]["sample"]
    children = children_of(result)
    expected = [f"temperature={t:g}" for t in sample["temperatures"]] + [
        "temperature=1, top_k=40",
        "temperature=1, top_p=0.9",
    ]
    assert sorted(child.info.run_name for child in children) == sorted(expected)
    client = mlflow.MlflowClient()
    entropy = {}
    for child in children:
        assert child.info.status == "FINISHED"
        assert TEXT_METRICS <= set(child.data.metrics)
        text = Path(client.download_artifacts(child.info.run_id, "sample.txt")).read_text(encoding="utf-8")
        for prompt, generated in zip(sample["prompts"], text.split("\n\n"), strict=True):
            assert generated.startswith(prompt)
            assert len(generated.split()) == len(prompt.split()) + sample["num_words"]
        if child.data.params["top_k"] == "off" and child.data.params["top_p"] == "off":
            entropy[float(child.data.params["temperature"])] = child.data.metrics["entropy_bits"]
    ordered = [entropy[t] for t in sorted(entropy)]
    assert ordered == sorted(ordered) and ordered[0] < ordered[-1]


def test_the_registered_serving_model_generates_words(flow_run):
    _, result = flow_run
    [serving] = [
        model
        for model in mlflow.search_logged_models([result["experiment_id"]], output_format="list")
        if model.name == "serving"
    ]
    generator = mlflow.pyfunc.load_model(serving.model_uri)
    request = pd.DataFrame(
        {"prompt": ["the will to", "what is"], "temperature": [0.5, 1.0], "length": [4, 3]}
    )
    texts = generator.predict(request)["text"].tolist()
    assert [len(text.split()) for text in texts] == [4, 3]
    assert result["champion"]["champion.outcome"] in ("promoted", "first version")


def test_rerun_skips_up_to_date_stages_and_a_sampling_knob_reruns_only_sampling(flow_run):
    root, first = flow_run
    again = transformer_flow(root=root)
    assert again["stages_run"] == []
    params = params_of(root)
    params["transformer"]["sample"]["temperatures"] = [0.3]
    write_params(root, params)
    changed = transformer_flow(root=root)
    assert changed["stages_run"] == ["transformer_sample"]
    assert sorted(child.info.run_name for child in children_of(changed)) == [
        "temperature=0.3",
        "temperature=1, top_k=40",
        "temperature=1, top_p=0.9",
    ]


def test_prompt_outside_the_vocabulary_fails_cleanly_and_keeps_earlier_samples(flow_run):
    root, result = flow_run
    samples = root / "outputs/transformer/samples"
    before = {path.name: path.read_bytes() for path in samples.iterdir()}
    params = params_of(root)
    original = dict(params["transformer"]["sample"])
    params["transformer"]["sample"]["prompts"] = ["zebra quokka"]
    write_params(root, params)
    try:
        with pytest.raises(
            StageFailed, match="none of its words is in the vocabulary.*unknown_prompt"
        ) as failure:
            transformer_flow(root=root)
        assert "Traceback" not in str(failure.value)
    finally:
        params["transformer"]["sample"] = original
        write_params(root, params)
    assert {path.name: path.read_bytes() for path in samples.iterdir()} == before


def test_plain_dvc_repro_runs_the_stages_and_a_sampling_experiment_reruns_only_sampling(tmp_path):
    root = make_repo_copy(tmp_path / "repo")
    repro = dvc(root, "repro", "transformer_sample")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert json.loads(dvc(root, "status", "--json", "transformer_sample").stdout) == {}
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    model_md5 = lock["transformer_train"]["outs"][0]["md5"]
    experiment = dvc(root, "exp", "run", "-S", "transformer.sample.num_words=3", "transformer_sample")
    assert experiment.returncode == 0, experiment.stdout + experiment.stderr
    assert "Running stage 'transformer_sample'" in experiment.stdout
    assert "Running stage 'transformer_train'" not in experiment.stdout
    assert (
        yaml.safe_load((root / "dvc.lock").read_text())["stages"]["transformer_train"]["outs"][0]["md5"]
        == model_md5
    )
    results = json.loads((root / "outputs/transformer/samples/samples.json").read_text())
    assert all(len(text["text"].split()) == 3 for result in results for text in result["texts"])
