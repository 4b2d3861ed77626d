"""Job progress (minormech.runlog): plain lines, one per percent in the log and every tenth
on the terminal once a job has run for half a minute; no carriage-return bars."""

import io
import logging
import sys

import pytest

from minormech import runlog


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A job's logger with a fake terminal and a clock that advances 1 s per call."""
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    clock = iter(range(10**6))
    monkeypatch.setattr(runlog.time, "monotonic", lambda: float(next(clock)))
    log = tmp_path / "job.log"
    runlog.job_logger(str(log))
    log_file = sys.stderr
    yield log, terminal
    logging.basicConfig(stream=terminal, force=True)
    sys.stderr = terminal
    log_file.close()


def test_a_long_loop_logs_one_line_per_percent_and_every_tenth_on_the_terminal(job):
    log, terminal = job
    assert list(runlog.progress("patching k")(range(250), 250)) == list(range(250))
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text() and len(lines) == 101  # 0% (item 1) .. 100%
    assert lines[-1].endswith("patching k: 250/250 (100%), 4 min 10 s")
    shown = terminal.getvalue().splitlines()
    assert all(line.startswith("progress: patching k: ") for line in shown)
    # Quiet for the first 30 s (items 1-29), then at item 30 (12%) and each new tenth: 20%, ..., 100%.
    assert [line.split("(")[1].split(")")[0] for line in shown] == ["12%"] + [f"{p}%" for p in range(20, 101, 10)]
    assert "about" in shown[0] and "left" in shown[0]


def test_a_short_loop_logs_every_item_and_stays_off_the_terminal(job):
    log, terminal = job
    list(runlog.progress("train")(iter("abc"), 3))
    assert [line.split(" minormech: ")[1] for line in log.read_text().splitlines()] == [
        "train: 1/3 (33%), 1 s, about 2 s left",
        "train: 2/3 (66%), 2 s, about 1 s left",
        "train: 3/3 (100%), 3 s",
    ]
    assert terminal.getvalue() == ""
