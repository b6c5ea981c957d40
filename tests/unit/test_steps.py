"""The error line a step prints is the one the flow reads back, with its retry decision."""

from __future__ import annotations

from tasks import steps
from tasks.data import DownloadError
from tasks.text import TextError


def test_a_reported_error_reads_back_with_its_retry_decision(capsys):
    for error, retryable in [
        (TextError("corpus is empty"), False),
        (DownloadError("offline", retryable=True), True),
    ]:
        assert steps.report_error(error) == 2
        output = ["Running stage 'x':", *capsys.readouterr().err.splitlines()]
        assert steps.read_error(output) == (str(error), retryable)


def test_the_last_reported_error_wins_and_no_report_reads_as_none():
    assert steps.read_error(["error: first", "noise", "retryable error: second"]) == ("second", True)
    assert steps.read_error(["Traceback (most recent call last):", "KeyError: 'x'"]) is None
