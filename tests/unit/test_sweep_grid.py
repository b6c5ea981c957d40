"""A sweep's grid points (flows/sweep.py) and the dotted overrides each point's flow run applies
(tasks/params.py), without services."""

from __future__ import annotations

import shutil

import pytest

from flows.registry import TECHNIQUES
from flows.sweep import grid_points, parse_axis
from tasks.params import ParamsError, applied_profile, load_params, read_yaml
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO_ROOT)


def test_the_default_grid_is_the_product_of_the_techniques_params_lists(params):
    gan = TECHNIQUES["gan"]
    points = grid_points(gan, params, None)
    lists = [params["gan"]["train"]["learning_rate"], params["gan"]["train"]["label_noise"], params["gan"]["model"]["dropout"]]
    assert len(points) == len(lists[0]) * len(lists[1]) * len(lists[2])
    # Each point sets every axis to a one-value list: its stage trains a grid of one.
    assert points[0].overrides == {
        "gan.train.learning_rate": [lists[0][0]],
        "gan.train.label_noise": [lists[1][0]],
        "gan.model.dropout": [lists[2][0]],
    }


def test_given_axes_set_lists_as_one_value_lists_and_scalars_as_values(params):
    axes = dict([parse_axis("vae.train.beta=0.5,4"), parse_axis("vae.train.epochs=1,2,3")])
    points = grid_points(TECHNIQUES["vae"], params, axes)
    assert [point.label for point in points][:2] == ["beta=0.5, epochs=1", "beta=0.5, epochs=2"]
    assert len(points) == 6
    assert points[-1].overrides == {"vae.train.beta": [4], "vae.train.epochs": 3}


@pytest.mark.parametrize(
    ("technique", "axes", "message"),
    [
        ("text", None, "text has no grid of its own: give the sweep its axes"),
        ("vae", {"vae.train.betta": [1.0]}, "sweep axis vae.train.betta: no such key"),
        ("vae", {"vae.train.beta": []}, "sweep axis vae.train.beta: give a non-empty list"),
    ],
)
def test_a_bad_grid_is_refused_in_one_line(params, technique, axes, message):
    with pytest.raises(ParamsError, match=message):
        grid_points(TECHNIQUES[technique], params, axes)


def test_an_axis_must_be_key_equals_values():
    assert parse_axis("gan.train.learning_rate=1e-4,2e-4") == ("gan.train.learning_rate", [1e-4, 2e-4])
    with pytest.raises(ParamsError, match="write it as key=value1,value2"):
        parse_axis("vae.train.beta")


def test_overrides_apply_over_the_profile_for_the_run_and_are_put_back(repo_params_copy):
    root = repo_params_copy
    before = (root / "params.yaml").read_bytes()
    with applied_profile(root, "quick", {"vae.train.beta": [0.5], "vae.train.epochs": 1}) as merged:
        on_disk = read_yaml(root / "params.yaml")
        assert on_disk["vae"]["train"]["beta"] == [0.5] and on_disk["vae"]["train"]["epochs"] == 1
        assert merged == on_disk
        assert on_disk["text"]["data"]["max_chars"] == 200000  # the quick profile is under them
    assert (root / "params.yaml").read_bytes() == before


def test_an_override_of_an_unknown_key_names_it(repo_params_copy):
    with pytest.raises(ParamsError, match=r"overrides: sets unknown key vae.train.betta \(did you mean 'beta'\?\)"):
        load_params(repo_params_copy, None, {"vae.train.betta": [1.0]})


@pytest.fixture
def repo_params_copy(tmp_path):
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO_ROOT / "profiles", tmp_path / "profiles")
    return tmp_path
