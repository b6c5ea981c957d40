"""dvc.yaml is the one definition of the pipeline: plain `dvc repro` / `dvc exp run` reproduce
it, and the flows, params and step code cannot drift away from it unnoticed."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import networkx
import pydantic
import pytest
import yaml

from flows.registry import KNOWN_SECTIONS, TECHNIQUES
from tests.conftest import REPO_ROOT
from tests.flows.conftest import dvc


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


def paths_of(technique) -> object:
    """The technique's paths dataclass, declared beside its params model."""
    module = importlib.import_module(technique.params.__module__)
    return getattr(module, technique.params.__name__.replace("Params", "Paths"))()


def test_every_stage_belongs_to_exactly_one_technique():
    declared = [stage for technique in TECHNIQUES.values() for stage in technique.stages]
    assert sorted(declared) == sorted(dvc_yaml()["stages"]), "flows/registry.py and dvc.yaml disagree"
    for name, technique in TECHNIQUES.items():
        assert all(stage.startswith(f"{name}_") for stage in technique.stages)


def test_each_technique_lists_its_stages_in_an_order_dvc_can_run_them():
    from dvc.repo import Repo

    with Repo(str(REPO_ROOT)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        depends_on = {
            stage.name: {dependency.name for dependency in networkx.descendants(graph, stage)}
            for stage in graph.nodes
        }
    for technique in TECHNIQUES.values():
        for position, stage in enumerate(technique.stages):
            later = set(technique.stages[position + 1 :])
            assert not depends_on[stage] & later, f"{stage} runs before a stage it depends on"


def step_names(module: str) -> set[str]:
    """The steps a step module's `run_steps({...})` offers, read from its source."""
    path = REPO_ROOT / Path(*module.split(".")).with_suffix(".py")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "run_steps":
            return {key.value for key in node.args[0].keys}
    return set()


@pytest.mark.parametrize("name", sorted(dvc_yaml()["stages"]))
def test_every_stage_command_is_a_step_its_module_has(name):
    command = dvc_yaml()["stages"][name]["cmd"]
    match = re.fullmatch(r"python -m tasks\.run (tasks\.[\w.]+) (\w+)", command)
    assert match, command
    assert match.group(2) in step_names(match.group(1)), command


def listed_params() -> set[str]:
    return {key for stage in dvc_yaml()["stages"].values() for key in stage.get("params", [])}


def test_every_params_key_a_stage_lists_exists():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert set(params) <= KNOWN_SECTIONS
    for key in listed_params():
        node = params
        for part in key.split("."):
            assert part in node, f"dvc.yaml lists {key}, which params.yaml does not have"
            node = node[part]


def knobs(model, prefix: str):
    """Dotted names of every leaf field of a params model ("text.train.epochs", ...)."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            yield from knobs(annotation, f"{prefix}.{name}")
        else:
            yield f"{prefix}.{name}"


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_every_knob_is_listed_by_a_stage(technique):
    # A knob no stage lists would change nothing DVC sees: runs would not be reproducible.
    listed = listed_params()
    for knob in knobs(TECHNIQUES[technique].params, technique):
        prefixes = [".".join(knob.split(".")[:depth]) for depth in range(1, knob.count(".") + 2)]
        assert any(prefix in listed for prefix in prefixes), f"{knob} is read but no stage lists it"


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_the_paths_the_flow_logs_are_declared_outputs_of_dvc_stages(technique):
    declared = set()
    for stage in dvc_yaml()["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            declared |= {next(iter(item)) if isinstance(item, dict) else item for item in stage.get(kind, [])}
    for path in vars(paths_of(TECHNIQUES[technique])).values():
        assert str(path) in declared, f"{path} is not an output of any stage in dvc.yaml"


@pytest.mark.slow
def test_dvc_repro_and_exp_run_reproduce_the_pipeline_without_prefect(repo_copy):
    """Plain DVC, no Prefect, on the text pipeline. (Every stage of every technique runs through
    `dvc repro --single-item` in the flow tests, each ending with `dvc status` clean; a whole
    `dvc repro` of all 14 stages here took 70-120 s for nothing more.)"""
    repro = dvc(repo_copy, "repro", "text_sample")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert json.loads(dvc(repo_copy, "status", "--json", "text_sample").stdout) == {}
    samples = sorted(p.name for p in (repo_copy / "outputs/text/samples").glob("temperature_*.txt"))
    assert samples == [
        "temperature_0.2.txt",
        "temperature_0.5.txt",
        "temperature_1.2.txt",
        "temperature_1.txt",
    ]
    model_md5 = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]["text_train"]["outs"][0]["md5"]

    # A sweep over a sampling knob re-runs sampling only, and keeps params.yaml in sync with it.
    experiment = dvc(repo_copy, "exp", "run", "-S", "text.sample.num_chars=25", "text_sample")
    assert experiment.returncode == 0, experiment.stdout + experiment.stderr
    assert "Running stage 'text_sample'" in experiment.stdout
    assert "Running stage 'text_train'" not in experiment.stdout
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]
    assert lock["text_train"]["outs"][0]["md5"] == model_md5
    sample = json.loads((repo_copy / "outputs/text/samples/samples.json").read_text())[0]
    assert len(sample["text"]) == 25
    shown = dvc(repo_copy, "exp", "show", "--json")
    assert shown.returncode == 0 and "num_chars" in shown.stdout
