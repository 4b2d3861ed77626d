"""Logging for rule scripts: everything a job says goes to its Snakemake log file.

Scripts call `job_logger(snakemake.log[0])`; stderr is redirected there too, so tqdm
progress bars and warnings from transformers end up in `logs/` beside the messages.
An uncaught error is written to the log with its traceback and, as one line naming the
problem and the log, to the terminal Snakemake runs in.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from tqdm import tqdm


def job_logger(log_path: str, name: str = "minormech") -> logging.Logger:
    terminal = sys.stderr
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
    """A progress wrapper taking (iterable, total), for library functions that accept one;
    updates at most every 5 s so log files stay short."""

    def wrap(iterable: Iterable, total: int) -> Iterable:
        return tqdm(iterable, total=total, desc=description, mininterval=5, file=sys.stderr)

    return wrap
