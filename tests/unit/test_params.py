"""params.yaml and profiles: parsing into typed sections, errors that name the bad key,
profile overlays and their temporary application to params.yaml."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.registry import TECHNIQUES, validate
from tasks.params import (
    PARAMS_BACKUP,
    ParamsError,
    RuntimeParams,
    applied_profile,
    load_params,
    overlay,
    parse_section,
    parse_yaml,
    read_yaml,
)
from tasks.text.char_lstm.params import TextParams
from tasks.tracking import TrackingParams

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOK_TEMPERATURES = [0.2, 0.5, 1.0, 1.2]


@pytest.fixture(scope="module")
def repo_params() -> dict:
    return load_params(REPO_ROOT)


@pytest.fixture
def params(repo_params) -> dict:
    """A copy of the repo's params to break."""
    return copy.deepcopy(repo_params)


def parse_error(params: dict, section: str = "text", model=TextParams) -> str:
    with pytest.raises(ParamsError) as error:
        parse_section(params, section, model)
    return str(error.value)


def leaves(mapping: dict, prefix: tuple = ()):
    """(key path, value) for every non-mapping value."""
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def at(mapping: dict, path: tuple):
    for key in path:
        mapping = mapping[key]
    return mapping


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A directory with this repo's params.yaml and profiles/."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO_ROOT / "profiles", tmp_path / "profiles")
    return tmp_path


# --- The repo's params ----------------------------------------------------------------------


def test_repo_params_hold_the_book_values(repo_params):
    text = parse_section(repo_params, "text", TextParams)
    runtime = parse_section(repo_params, "runtime", RuntimeParams)
    tracking = parse_section(repo_params, "tracking", TrackingParams)

    assert (text.data.maxlen, text.data.step, text.data.validation_split) == (60, 3, 0.1)
    assert (text.model.units, text.model.num_layers, text.model.embedding_dim) == (128, 1, 0)
    assert (text.train.learning_rate, text.train.batch_size, text.train.epochs) == (0.01, 128, 60)
    assert text.train.clipnorm == 0.0
    assert text.sample.temperatures == BOOK_TEMPERATURES
    assert text.train.epoch_sample_temperatures == BOOK_TEMPERATURES
    assert runtime.dtype_policy == "auto" and runtime.jit_compile is False
    assert tracking.uri == "" and tracking.experiment_prefix == "gendl"


def test_yaml_is_read_as_yaml_1_2():
    # PyYAML (YAML 1.1) would read `off` as False and `1e-6` as a string.
    assert parse_yaml("a: off\nb: 1e-6\nc: 0.01\n") == {"a": "off", "b": 1e-6, "c": 0.01}


# --- Errors that name the key -----------------------------------------------------------------


def test_unknown_key_is_named_with_a_suggestion(params):
    params["text"]["train"]["epoch"] = params["text"]["train"].pop("epochs")

    message = parse_error(params)

    assert "unknown key text.train.epoch" in message
    assert "did you mean 'epochs'" in message
    assert "missing key text.train.epochs" in message


@pytest.mark.parametrize("value", ["3", True, 3.0], ids=["string", "bool", "float"])
def test_ill_typed_value_is_named(params, value):
    params["text"]["train"]["epochs"] = value

    message = parse_error(params)

    assert "text.train.epochs" in message
    assert repr(value) in message


@pytest.mark.parametrize("temperatures", [[0.0], [-1], [1.0, float("inf")]])
def test_temperatures_out_of_range_are_named(params, temperatures):
    params["text"]["sample"]["temperatures"] = temperatures

    message = parse_error(params)

    assert "text.sample.temperatures" in message


def test_zero_learning_rate_is_named(params):
    params["text"]["train"]["learning_rate"] = 0

    message = parse_error(params)

    assert "text.train.learning_rate" in message
    assert "greater than 0" in message


def test_duplicate_temperatures_are_rejected(params):
    params["text"]["sample"]["temperatures"] = [0.5, 1.0, 0.5]

    message = parse_error(params)

    assert "text.sample.temperatures" in message and "distinct" in message


def test_empty_temperatures_are_rejected(params):
    params["text"]["sample"]["temperatures"] = []

    assert "text.sample.temperatures" in parse_error(params)


def test_missing_key_is_named(params):
    del params["text"]["train"]["batch_size"]

    assert "missing key text.train.batch_size" in parse_error(params)


def test_bad_runtime_choice_is_named(params):
    params["runtime"]["dtype_policy"] = "float16"

    assert "runtime.dtype_policy" in parse_error(params, "runtime", RuntimeParams)


def test_missing_section_is_named(params):
    del params["text"]

    assert "missing section 'text'" in parse_error(params)


def test_unknown_top_level_section_is_named(params):
    params["txt"] = params.pop("text")

    with pytest.raises(ParamsError, match=r"unknown section 'txt' \(did you mean 'text'\?\)"):
        validate(params)


def test_the_repo_params_and_the_quick_profile_are_valid_for_every_technique(repo_params):
    sections = validate(repo_params)
    assert set(sections) == {"runtime", "tracking", *TECHNIQUES}
    validate(load_params(REPO_ROOT, "quick"))


def test_the_quick_profile_sets_only_sections_the_registry_knows():
    profile = read_yaml(REPO_ROOT / "profiles" / "quick.yaml")
    assert set(profile) <= {"runtime", "tracking", *TECHNIQUES}
    assert set(TECHNIQUES) <= set(profile), "the main job's quick profile must shorten every technique"


# --- Files --------------------------------------------------------------------------------


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("text:\n  data: [unclosed\n")

    with pytest.raises(ParamsError, match="not valid YAML") as error:
        load_params(tmp_path)
    assert str(path) in str(error.value)


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- text\n- runtime\n")

    with pytest.raises(ParamsError, match="expected a mapping"):
        read_yaml(path)


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="file not found") as error:
        load_params(tmp_path)
    assert str(tmp_path / "params.yaml") in str(error.value)


def test_profile_setting_an_unknown_key_is_named(repo_copy):
    (repo_copy / "profiles" / "typo.yaml").write_text("text:\n  train:\n    epoch: 3\n")

    with pytest.raises(ParamsError) as error:
        load_params(repo_copy, "typo")

    message = str(error.value)
    assert "typo.yaml" in message
    assert "unknown key text.train.epoch" in message and "did you mean 'epochs'" in message


def test_unknown_profile_lists_the_available_ones(repo_copy):
    (repo_copy / "profiles" / "gpu.yaml").write_text("text:\n  train:\n    epochs: 5\n")

    with pytest.raises(ParamsError, match="unknown profile 'qick'") as error:
        load_params(repo_copy, "qick")
    assert "available: gpu, quick" in str(error.value)


# --- Overlays -------------------------------------------------------------------------------


def test_overlay_deep_merges_without_mutating_its_inputs():
    base = {
        "text": {"train": {"epochs": 60, "temperatures": [0.2, 0.5]}, "sample": {"num_chars": 400}},
        "seed": 1,
    }
    patch = {"text": {"train": {"epochs": 3}}, "seed": 2}
    base_before, patch_before = copy.deepcopy(base), copy.deepcopy(patch)

    merged = overlay(base, patch)

    assert merged == {
        "text": {"train": {"epochs": 3, "temperatures": [0.2, 0.5]}, "sample": {"num_chars": 400}},
        "seed": 2,
    }
    assert base == base_before and patch == patch_before
    merged["text"]["train"]["temperatures"].append(9.0)
    assert base == base_before, "merged shares a list with base"


def test_overlay_replaces_lists_whole():
    merged = overlay({"temperatures": [0.2, 0.5, 1.0]}, {"temperatures": [0.3]})

    assert merged == {"temperatures": [0.3]}


def test_overlay_rejects_unknown_keys_with_their_dotted_path():
    with pytest.raises(ParamsError, match=r"unknown key text\.train\.epoch \(did you mean 'epochs'\?\)"):
        overlay({"text": {"train": {"epochs": 60}}}, {"text": {"train": {"epoch": 3}}})


def test_quick_profile_merges_and_validates(repo_params):
    profile = read_yaml(REPO_ROOT / "profiles" / "quick.yaml")

    merged = load_params(REPO_ROOT, "quick")

    parse_section(merged, "text", TextParams)
    parse_section(merged, "runtime", RuntimeParams)
    parse_section(merged, "tracking", TrackingParams)
    profile_values = dict(leaves(profile))
    assert profile_values, "empty profile"
    for path, value in leaves(repo_params):
        assert at(merged, path) == profile_values.get(path, value), ".".join(path)


# --- applied_profile ------------------------------------------------------------------------


def test_applied_profile_writes_the_merged_params_and_restores_the_file(repo_copy):
    params_path = repo_copy / "params.yaml"
    original = params_path.read_bytes()

    with applied_profile(repo_copy, "quick") as params:
        assert params == load_params(repo_copy, "quick")
        assert read_yaml(params_path) == params
        assert params != parse_yaml(original.decode())

    assert params_path.read_bytes() == original
    assert sorted(path.name for path in repo_copy.iterdir()) == [".gendl", "params.yaml", "profiles"]
    assert [path.name for path in (repo_copy / ".gendl").iterdir()] == ["checkout.lock"]


def test_applied_profile_restores_the_file_when_the_body_fails(repo_copy):
    params_path = repo_copy / "params.yaml"
    original = params_path.read_bytes()

    with pytest.raises(RuntimeError, match="stage failed"):
        with applied_profile(repo_copy, "quick"):
            assert params_path.read_bytes() != original
            raise RuntimeError("stage failed")

    assert params_path.read_bytes() == original


def test_applied_profile_without_a_profile_leaves_the_file_alone(repo_copy):
    params_path = repo_copy / "params.yaml"
    original = params_path.read_bytes()

    with applied_profile(repo_copy, None) as params:
        assert params == parse_yaml(original.decode())
        assert params_path.read_bytes() == original


def test_applied_profile_with_a_bad_profile_changes_nothing(repo_copy):
    (repo_copy / "profiles" / "typo.yaml").write_text("text:\n  train:\n    epoch: 3\n")
    original = (repo_copy / "params.yaml").read_bytes()

    with pytest.raises(ParamsError):
        with applied_profile(repo_copy, "typo"):
            pytest.fail("the body ran with an invalid profile")

    assert (repo_copy / "params.yaml").read_bytes() == original


def second_run(root: Path) -> subprocess.CompletedProcess:
    """Another process that tries to apply no profile in the same checkout."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from tasks.params import applied_profile\n"
            "with applied_profile(Path(sys.argv[1]), None):\n    print('got the checkout')",
            str(root),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )


def test_a_second_run_in_the_same_checkout_fails_at_once_and_changes_nothing(repo_copy):
    params_path = repo_copy / "params.yaml"
    original = params_path.read_bytes()

    with applied_profile(repo_copy, "quick"):
        applied = params_path.read_bytes()
        with applied_profile(repo_copy, "quick"):  # the same process again (a subflow): allowed
            pass
        refused = second_run(repo_copy)
        assert refused.returncode != 0 and "got the checkout" not in refused.stdout
        assert re.search(r"CheckoutBusy: .* is in use by another gendl flow run \(pid \d+\)", refused.stderr)
        assert params_path.read_bytes() == applied, "the second run touched the first one's params"

    assert params_path.read_bytes() == original
    assert second_run(repo_copy).stdout == "got the checkout\n"  # released: the next run gets it


def test_a_run_killed_while_a_profile_was_applied_is_repaired_by_the_next(repo_copy):
    params_path = repo_copy / "params.yaml"
    original = params_path.read_bytes()
    killed = subprocess.run(  # applies the profile, then dies without cleaning up
        [
            sys.executable,
            "-c",
            "import os, sys; from pathlib import Path; from tasks.params import applied_profile\n"
            "with applied_profile(Path(sys.argv[1]), 'quick'):\n    os._exit(9)",
            str(repo_copy),
        ],
        cwd=REPO_ROOT,
    )
    assert killed.returncode == 9
    assert params_path.read_bytes() != original and (repo_copy / PARAMS_BACKUP).is_file()

    with applied_profile(repo_copy, None) as params:  # the lock died with the process
        assert params_path.read_bytes() == original
        assert params == parse_yaml(original.decode())
    assert not (repo_copy / PARAMS_BACKUP).exists()


def test_apply_profile_writes_the_merged_params_for_dvc_and_names_an_unknown_profile(repo_copy):
    book = load_params(repo_copy)

    result = subprocess.run(
        [sys.executable, "-m", "tasks.params", "apply", "quick", "--root", str(repo_copy)],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "git checkout params.yaml" in result.stdout
    applied = load_params(repo_copy)  # what DVC now reads
    assert applied == load_params(repo_copy, "quick") != book
    assert applied["text"]["train"]["epochs"] == 3 != book["text"]["train"]["epochs"]
    unknown = subprocess.run(
        [sys.executable, "-m", "tasks.params", "apply", "nope", "--root", str(repo_copy)],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert unknown.returncode == 1 and unknown.stderr.strip().startswith("error: unknown profile 'nope'")
    assert load_params(repo_copy) == applied, "a failed apply changed params.yaml"
