"""Logging for rule scripts: everything a job says goes to its Snakemake log file.

Scripts call `job_logger(snakemake.log[0])`; stderr is redirected there too, so tqdm
progress bars and warnings from transformers end up in `logs/` beside the messages.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable

from tqdm import tqdm


def job_logger(log_path: str, name: str = "minormech") -> logging.Logger:
    sys.stderr = open(log_path, "a", buffering=1)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    return logging.getLogger(name)


def progress(description: str):
    """A progress wrapper taking (iterable, total), for library functions that accept one;
    updates at most every 5 s so log files stay short."""

    def wrap(iterable: Iterable, total: int) -> Iterable:
        return tqdm(iterable, total=total, desc=description, mininterval=5, file=sys.stderr)

    return wrap
