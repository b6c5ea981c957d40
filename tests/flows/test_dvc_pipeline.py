"""dvc.yaml is the one definition of the pipeline: plain `dvc repro` / `dvc exp run` reproduce
it, and the flows, params and step code cannot drift away from it unnoticed."""

from __future__ import annotations

import json
import re

import pydantic
import pytest
import yaml

from flows.cli import KNOWN_SECTIONS
from tasks import deepdream, gan, style_transfer, text, vae
from tasks.pipeline import load_stages
from tests.conftest import REPO_ROOT
from tests.flows.conftest import dvc

TEXT_STAGES = ["text_download", "text_prepare", "text_train", "text_sample"]
STEPS = {  # technique -> (module the stages run, its CLI steps, its params model, its paths)
    "text": ("tasks.text", {"download", "prepare", "train", "sample"}, text.TextParams, text.TextPaths),
    "deepdream": ("tasks.deepdream", {"image", "dream"}, deepdream.DeepDreamParams, deepdream.DeepDreamPaths),
    "style_transfer": (
        "tasks.style_transfer",
        {"images", "stylize"},
        style_transfer.StyleTransferParams,
        style_transfer.StyleTransferPaths,
    ),
    "vae": ("tasks.vae", {"data", "train", "sample"}, vae.VaeParams, vae.VaePaths),
    "gan": ("tasks.gan", {"data", "classifier", "train"}, gan.GanParams, gan.GanPaths),
}


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


def test_flow_builds_its_tasks_from_dvc_yaml_in_dependency_order():
    stages = load_stages(REPO_ROOT, prefix="text_")
    assert [stage.name for stage in stages] == TEXT_STAGES
    assert {stage.name: stage.retries for stage in stages}["text_download"] > 0


def test_flow_builds_deepdream_tasks_in_dependency_order():
    stages = load_stages(REPO_ROOT, prefix="deepdream_")
    assert [stage.name for stage in stages] == ["deepdream_image", "deepdream_dream"]


@pytest.mark.parametrize("technique", sorted(STEPS))
def test_every_stage_command_is_a_step_the_cli_has(technique):
    module, steps, _, _ = STEPS[technique]
    stages = {name: stage for name, stage in dvc_yaml()["stages"].items() if name.startswith(f"{technique}_")}
    assert stages
    for stage in stages.values():
        match = re.fullmatch(rf"python -m {re.escape(module)} (\w+)", stage["cmd"])
        assert match and match.group(1) in steps, stage["cmd"]


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


@pytest.mark.parametrize("technique", sorted(STEPS))
def test_every_knob_is_listed_by_a_stage(technique):
    # A knob no stage lists would change nothing DVC sees: runs would not be reproducible.
    listed = listed_params()
    for knob in knobs(STEPS[technique][2], technique):
        prefixes = [".".join(knob.split(".")[:depth]) for depth in range(1, knob.count(".") + 2)]
        assert any(prefix in listed for prefix in prefixes), f"{knob} is read but no stage lists it"


@pytest.mark.parametrize("technique", sorted(STEPS))
def test_the_paths_the_flow_logs_are_declared_outputs_of_dvc_stages(technique):
    declared = set()
    for stage in dvc_yaml()["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            declared |= {next(iter(item)) if isinstance(item, dict) else item for item in stage.get(kind, [])}
    for path in vars(STEPS[technique][3]()).values():
        assert str(path) in declared, f"{path} is not an output of any stage in dvc.yaml"


@pytest.mark.slow
def test_dvc_repro_and_exp_run_reproduce_the_pipeline_without_prefect(repo_copy):
    repro = dvc(repo_copy, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert json.loads(dvc(repo_copy, "status", "--json").stdout) == {}
    samples = sorted(p.name for p in (repo_copy / "outputs/text/samples").glob("temperature_*.txt"))
    assert samples == [
        "temperature_0.2.txt",
        "temperature_0.5.txt",
        "temperature_1.2.txt",
        "temperature_1.txt",
    ]
    assert (repo_copy / "outputs/vae/samples/comparison.png").is_file()
    assert (repo_copy / "outputs/gan/training/comparison.png").is_file()
    model_md5 = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]["text_train"]["outs"][0]["md5"]

    # A sweep over a sampling knob re-runs sampling only, and keeps params.yaml in sync with it.
    experiment = dvc(repo_copy, "exp", "run", "-S", "text.sample.num_chars=25")
    assert experiment.returncode == 0, experiment.stdout + experiment.stderr
    assert "Running stage 'text_sample'" in experiment.stdout
    assert "Running stage 'text_train'" not in experiment.stdout
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]
    assert lock["text_train"]["outs"][0]["md5"] == model_md5
    sample = json.loads((repo_copy / "outputs/text/samples/samples.json").read_text())[0]
    assert len(sample["text"]) == 25
    shown = dvc(repo_copy, "exp", "show", "--json")
    assert shown.returncode == 0 and "num_chars" in shown.stdout
