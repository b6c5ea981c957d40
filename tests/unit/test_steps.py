"""The error line a step prints is the one the flow reads back, with its retry decision; the step
command line every stage runs."""

from __future__ import annotations

import logging
import re
import time

import pytest

from tasks import steps
from tasks.params import ParamsError
from tasks.storage import DownloadError


def test_a_reported_error_reads_back_with_its_retry_decision(capsys):
    for error, retryable in [
        (ParamsError("text.train.epochs: must be >= 1"), False),
        (DownloadError("offline", retryable=True), True),
    ]:
        assert steps.report_error(error) == 2
        output = ["Running stage 'x':", *capsys.readouterr().err.splitlines()]
        assert steps.read_error(output) == (str(error), retryable)


def test_the_last_reported_error_wins_and_no_report_reads_as_none():
    assert steps.read_error(["error: first", "noise", "retryable error: second"]) == ("second", True)
    assert steps.read_error(["Traceback (most recent call last):", "KeyError: 'x'"]) is None


def test_run_steps_runs_the_named_step_with_the_root(tmp_path):
    calls = []
    code = steps.run_steps(
        {"train": calls.append, "sample": lambda root: None}, "doc", ["train", "--root", str(tmp_path)]
    )
    assert code == 0 and calls == [tmp_path]


def test_run_steps_turns_an_input_error_into_one_line(capsys):
    def bad(root):
        raise DownloadError("could not download x", retryable=True)

    assert steps.run_steps({"download": bad}, "doc", ["download"]) == 2
    assert capsys.readouterr().err == "retryable error: could not download x\n"


def test_run_steps_lets_a_bug_raise():
    def buggy(root):
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        steps.run_steps({"train": buggy}, "doc", ["train"])


def test_run_steps_rejects_an_unknown_step(capsys):
    with pytest.raises(SystemExit) as exit_info:
        steps.run_steps({"train": lambda root: None}, "doc", ["trian"])
    assert exit_info.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err


def test_a_step_that_succeeds_logs_its_own_seconds_and_those_before_it(caplog):
    with caplog.at_level(logging.INFO):
        assert steps.run_steps({"train": lambda root: time.sleep(0.05)}, "doc", ["train"]) == 0
    match = re.fullmatch(
        r"step train done: ([\d.]+) s in the step, ([\d.]+) s before it \(process start, imports\)",
        caplog.records[-1].getMessage(),
    )
    assert match, caplog.records[-1].getMessage()
    own, before = float(match[1]), float(match[2])
    # `before` is this test process's age so far: pytest's start and imports.
    assert 0.05 <= own < 5 and 0 < before < time.monotonic()
