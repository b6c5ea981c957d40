"""The command line a user runs: bad params get one line of error before Prefect even starts."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.flows.conftest import make_repo_copy


def run_flow_cli(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.text", "--root", str(root), *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unknown_params_key_is_named_with_a_suggestion_and_no_traceback(tmp_path):
    root = make_repo_copy(tmp_path / "repo")
    params = (root / "params.yaml").read_text().replace("epochs:", "epoch:")
    (root / "params.yaml").write_text(params)
    result = run_flow_cli(root)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "unknown key text.train.epoch (did you mean 'epochs'?)" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (root / "mlflow").exists() and not (root / "data").exists()


def test_ill_typed_value_and_unknown_profile_are_reported(tmp_path):
    root = make_repo_copy(tmp_path / "repo")
    params = (root / "params.yaml").read_text().replace("batch_size: 32", "batch_size: '32'")
    (root / "params.yaml").write_text(params)
    assert "text.train.batch_size: Input should be a valid integer, got '32'" in run_flow_cli(root).stderr
    unknown = run_flow_cli(root, "--profile", "quik")
    assert (
        unknown.returncode == 2
        and "unknown profile 'quik'" in unknown.stderr
        and "available: quick" in unknown.stderr
    )


def test_a_second_flow_in_the_same_checkout_refuses_at_once_and_params_stay_untouched(tmp_path):
    from tasks.params import applied_profile
    from tests.flows.conftest import GIT

    root = make_repo_copy(tmp_path / "repo")
    with applied_profile(root, "quick"):  # a first flow run holds the checkout, its profile applied
        started = time.monotonic()
        second = run_flow_cli(root, "--profile", "quick")
        seconds = time.monotonic() - started
    assert second.returncode == 2
    error_lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "in use by another gendl flow run" in error_lines[0], second.stderr
    assert seconds < 30, "the second run should refuse before Prefect starts"
    status = subprocess.run([*GIT, "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    assert status.stdout == "", status.stdout
