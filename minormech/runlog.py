"""Logging for rule scripts: everything a job says goes to its Snakemake log file.

Scripts call `job_logger(snakemake.log[0])`; stderr is redirected there too, so warnings
from transformers end up in `logs/` beside the messages. An uncaught error is written to
the log with its traceback and, as one line naming the problem and the log, to the
terminal Snakemake runs in. Long loops report their progress (`progress`) as plain lines:
one per percent in the log, and every tenth on the terminal once a job has run for half a
minute, so a 14-minute job is not silent there and logs hold no carriage-return bars
(library bars are off: rules/common.smk sets HF_HUB_DISABLE_PROGRESS_BARS for the jobs).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

#: Where a job's progress lines reach the user: the stderr Snakemake (or SLURM) shows,
#: kept by job_logger before it sends stderr to the log.
_terminal: list[TextIO] = []
#: A job quieter than this on the terminal: short jobs would only add noise there.
TERMINAL_AFTER_S = 30.0


def job_logger(log_path: str, name: str = "minormech") -> logging.Logger:
    terminal = sys.stderr
    _terminal[:] = [terminal]
    sys.stderr = open(log_path, "a", buffering=1)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logger = logging.getLogger(name)

    def report(kind, error, trace):
        logger.error("job failed", exc_info=(kind, error, trace))
        message = str(error).splitlines()[0] if str(error) else kind.__name__
        print(f"error: {message} (details: {log_path})", file=terminal, flush=True)

    sys.excepthook = report
    return logger


def progress(description: str):
    """A progress wrapper taking (iterable, total), for library functions that accept one."""

    def wrap(iterable: Iterable, total: int) -> Iterable:
        return reported(iterable, total, description)

    return wrap


def reported(iterable: Iterable, total: int, description: str) -> Iterator:
    """`iterable`, with a line after each item that completes a new percent (every item
    when there are fewer than 100) in the log, and after each new tenth on the terminal
    once TERMINAL_AFTER_S have passed."""
    logger = logging.getLogger("minormech")
    start = time.monotonic()
    logged = shown = -1
    for done, item in enumerate(iterable, 1):
        yield item
        elapsed = time.monotonic() - start
        percent = 100 * done // max(total, done)
        if percent == logged:
            continue
        logged = percent
        line = progress_line(description, done, total, elapsed)
        logger.info("%s", line)
        if _terminal and percent // 10 > shown and elapsed >= TERMINAL_AFTER_S:
            shown = percent // 10
            print(f"progress: {line}", file=_terminal[0], flush=True)


def progress_line(description: str, done: int, total: int, elapsed: float) -> str:
    """`description: 37/100 (37%), 1 min 20 s, about 2 min 16 s left`."""
    left = elapsed / done * (total - done) if done < total else 0.0
    return f"{description}: {done}/{total} ({100 * done // max(total, 1)}%), {duration(elapsed)}" + (
        f", about {duration(left)} left" if done < total else ""
    )


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"
