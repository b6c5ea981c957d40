"""Champion promotion against MLflow's registry on a temporary SQLite store: the first version
becomes champion, a run that trained nothing registers nothing, a better run moves the champion, a
worse one or one on other data does not, and two promotions at once decide one after the other
under the Prefect concurrency limit."""

from __future__ import annotations

import math
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.entities import LoggedModelStatus

from flows.registry import TECHNIQUES
from tasks import champion, tracking
from tasks.champion import KEPT, NOT_REGISTERED, PROMOTED, Candidate
from tests.conftest import REPO_ROOT

RULE = TECHNIQUES["text"].champion
PARAMS = {
    "tracking": {"uri": "", "experiment_prefix": "gendl", "promotion_margin": 0.01},
    "text": {"data": {"maxlen": 10, "step": 2}},
}


# The promotion lock is a Prefect global concurrency limit: these tests use the session's Prefect
# test server (tests/flows/conftest.py).


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> str:
    """A SQLite MLflow store and a unique experiment (so a unique registered model name)."""
    name = f"champion-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    return tracking.setup_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", name)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    root.mkdir()
    write_lock(root, corpus="c0")
    return root


def write_lock(root: Path, corpus: str) -> None:
    """A dvc.lock whose text data stages have these output hashes."""
    stages = {
        "text_download": {"outs": [{"path": "data/text/corpus.txt", "md5": corpus}]},
        "text_prepare": {"outs": [{"path": "data/text/prepared", "md5": f"{corpus}-prepared.dir"}]},
        "text_train": {"outs": [{"path": "models/text/model.keras", "md5": "not compared"}]},
    }
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def flow_run(experiment_id: str) -> str:
    """A parent run, as a flow run opens one."""
    return mlflow.MlflowClient().create_run(experiment_id).info.run_id


def candidate(run_id: str, metric: float, md5: str | None = None) -> Candidate:
    """A logged model (no files: the registry only points at it) as the flow's candidate."""
    md5 = md5 or uuid.uuid4().hex
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    model = mlflow.initialize_logged_model(
        name="serving", source_run_id=run_id, experiment_id=experiment_id, tags={"gendl.md5": md5}
    )
    mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return Candidate(model.model_id, run_id, md5, metric)


def promote(experiment_id: str, root: Path, metric: float | None, md5: str | None = None, params=PARAMS):
    """One flow run's promotion; metric None = the training stage did not run."""
    run_id = flow_run(experiment_id)
    trained = metric is not None
    new = candidate(run_id, metric, md5) if trained else None
    return run_id, champion.promote("text", RULE, run_id, params, root, trained, new)


def aliases(decision) -> dict[str, str]:
    model = mlflow.MlflowClient().get_registered_model(decision.registered_model)
    return {alias: str(version) for alias, version in model.aliases.items()}


def num_versions(decision) -> int:
    return len(mlflow.MlflowClient().search_model_versions(f"name = '{decision.registered_model}'"))


def test_first_run_sets_the_champion_and_tags_the_decision_on_run_and_version(store, workspace):
    run_id, decision = promote(store, workspace, 1.50)
    assert decision.outcome == PROMOTED and "no champion yet" in decision.reason
    assert aliases(decision) == {"champion": "1", "challenger": "1"}
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert tags["champion.outcome"] == "promoted"
    assert tags["champion.registered_model"] == decision.registered_model
    assert tags["champion.version"] == tags["champion.champion_version"] == "1"
    assert float(tags["champion.candidate_value"]) == 1.50
    assert tags["champion.margin"] == "0.01"
    version = mlflow.MlflowClient().get_model_version(decision.registered_model, "1")
    assert version.run_id == run_id
    assert version.tags["champion.outcome"] == "promoted"
    assert version.tags["gendl.metric"] == "kept_val_loss"
    assert version.tags["data.data/text/corpus.txt.md5"] == "c0"
    assert version.tags["params.text.data.maxlen"] == "10"


def test_a_run_that_trained_nothing_registers_nothing_and_keeps_the_champion(store, workspace):
    _, first = promote(store, workspace, 1.50, md5="weights-1")
    run_id, again = promote(store, workspace, None)
    assert again.outcome == NOT_REGISTERED and "nothing was trained" in again.reason
    assert again.champion_version == "1" and num_versions(again) == 1
    assert mlflow.MlflowClient().get_run(run_id).data.tags["champion.outcome"] == "not registered"
    # Stage "ran", but DVC restored the same files from its run-cache: still no new version.
    _, restored = promote(store, workspace, 1.50, md5="weights-1")
    assert restored.outcome == NOT_REGISTERED and "those of version 1" in restored.reason
    assert aliases(restored) == {"champion": "1", "challenger": "1"} and num_versions(restored) == 1


def test_better_run_moves_the_champion_worse_one_and_one_within_the_margin_do_not(store, workspace):
    promote(store, workspace, 1.50)
    _, better = promote(store, workspace, 1.40)
    assert better.outcome == PROMOTED and better.comparable is True
    assert better.champion_value == 1.50 and better.previous_champion_version == "1"
    assert aliases(better) == {"champion": "2", "challenger": "2"}

    _, worse = promote(store, workspace, 1.45)
    assert worse.outcome == KEPT and "champion kept" in worse.reason
    assert aliases(worse) == {"champion": "2", "challenger": "3"}

    _, marginal = promote(store, workspace, 1.40 * 0.995)  # better, but by less than 1%
    assert marginal.outcome == KEPT and "1.00% margin" in marginal.reason
    version = mlflow.MlflowClient().get_model_version(marginal.registered_model, marginal.version)
    assert version.tags["champion.outcome"] == "kept"
    assert version.tags["champion.comparable"] == "true"


def test_a_run_on_other_data_is_registered_but_not_compared(store, workspace):
    promote(store, workspace, 1.50)
    write_lock(workspace, corpus="c1")
    _, other = promote(store, workspace, 0.50)
    assert other.outcome == KEPT and other.comparable is False
    assert "data.data/text/corpus.txt.md5" in other.reason and "not compared" in other.reason
    assert aliases(other) == {"champion": "1", "challenger": "2"}
    write_lock(workspace, corpus="c0")
    params = {**PARAMS, "text": {"data": {"maxlen": 20, "step": 2}}}
    _, longer_context = promote(store, workspace, 0.50, params=params)
    assert longer_context.outcome == KEPT and "params.text.data.maxlen" in longer_context.reason


def test_a_model_without_the_metric_is_registered_but_never_champion(store, workspace):
    _, unscored = promote(store, workspace, math.nan)
    assert unscored.outcome == KEPT and aliases(unscored) == {"challenger": "1"}
    run_id = flow_run(store)
    nothing = champion.promote("text", RULE, run_id, PARAMS, workspace, True, None)
    assert nothing.outcome == NOT_REGISTERED and "no model finished" in nothing.reason


def test_two_promotions_at_once_decide_one_after_the_other(store, workspace):
    results, start = {}, threading.Barrier(2)

    def run(metric: float) -> None:
        run_id = flow_run(store)
        new = candidate(run_id, metric)
        start.wait()
        results[metric] = champion.promote("text", RULE, run_id, PARAMS, workspace, True, new)

    threads = [threading.Thread(target=run, args=(metric,)) for metric in (1.50, 1.20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    first, second = sorted(results.values(), key=lambda decision: int(decision.version))
    assert first.outcome == PROMOTED and first.previous_champion_version == ""
    # The second saw the first's decision: it was compared with the new champion.
    assert second.previous_champion_version == first.version and second.comparable is True
    assert aliases(first)["champion"] == (results[1.20].version)


def test_a_promotion_waits_while_another_holds_the_lock(store, workspace):
    run_id = flow_run(store)
    new = candidate(run_id, 1.0)
    name = champion.registered_model_name("gendl", "text")
    decisions = []
    with champion.promotion_lock(name):
        waiting = threading.Thread(
            target=lambda: decisions.append(
                champion.promote("text", RULE, run_id, PARAMS, workspace, True, new)
            )
        )
        waiting.start()
        time.sleep(3)
        assert waiting.is_alive() and not decisions
    waiting.join(timeout=60)
    assert decisions and decisions[0].outcome == PROMOTED


def test_registered_model_name_follows_the_prefix_or_the_experiment_name(monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert champion.registered_model_name("gendl", "vae") == "gendl-vae"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "nightly")
    assert champion.registered_model_name("gendl", "vae") == "nightly-vae"


def test_every_rule_names_stages_of_its_technique_and_params_of_params_yaml():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert {name for name, technique in TECHNIQUES.items() if technique.champion} == {"text", "transformer", "vae", "gan"}
    for technique in TECHNIQUES.values():
        if technique.champion:
            assert set(technique.champion.data_stages) < set(technique.stages)
            tags = champion.comparable_tags(
                REPO_ROOT / "no-such-dir", params, technique.champion
            )  # no dvc.lock
            assert set(tags) == {f"params.{key}" for key in technique.champion.data_params}
