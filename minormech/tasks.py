"""ICL tasks and their datasets (paper §5.2-§5.3).

A task maps an input point x and a hidden weight vector w (the intermediate result
the probes look for) to an integer output y. Tasks live in a registry so that new
ones can be added without touching the pipeline: the pipeline only ever refers to
a task by its registry name.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Task:
    """One ICL task: y = function(x, w) with x, w in {low..high}^dimension."""

    name: str
    function: Callable[[np.ndarray, np.ndarray], np.ndarray]
    context: str
    value_low: int = 0
    value_high: int = 22
    dimension: int = 2

    def output(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """y for points x[..., d] under weight w[d] (broadcasts over leading axes)."""
        return np.asarray(self.function(np.asarray(x), np.asarray(w)), dtype=np.int64)


def _linear_regression(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x * w).sum(axis=-1)


def _manhattan_distance(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.abs(x - w).sum(axis=-1)


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry; names are unique because output paths use them."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


register_task(
    Task(
        name="LR",
        function=_linear_regression,
        context=(
            "The output represents the result of a linear regression given 2 dimensions with output range [0-1000]: "
        ),
    )
)
register_task(
    Task(
        name="MD",
        function=_manhattan_distance,
        context=(
            "The output represents the Manhattan Distance to a point given 2 dimensions with output range [0-1000]: "
        ),
    )
)


def get_task(name: str) -> Task:
    """The registered task called `name`, or a KeyError listing the known names."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None


def value_grid(task: Task) -> np.ndarray:
    """Omega_N: every integer vector in {low..high}^d, in lexicographic order, shape [N^d, d].

    The row index is the weight id used in every output file.
    """
    values = np.arange(task.value_low, task.value_high + 1)
    mesh = np.meshgrid(*([values] * task.dimension), indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=-1).astype(np.int64)


def stable_seed(*parts: int | str) -> list[int]:
    """A numpy seed sequence from ints and names; names hash with CRC32 so that seeds
    do not depend on Python's per-process string hash randomisation."""
    return [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]


def split_weights(task: Task, n_test: int, seed: int) -> np.ndarray:
    """Boolean mask over value_grid(task): True for the n_test weights drawn (without
    replacement, seeded per task as the paper draws one split per task) as the test set."""
    n_weights = len(value_grid(task))
    if not 0 < n_test < n_weights:
        raise ValueError(f"test_weights must be in 1..{n_weights - 1}, got {n_test}")
    rng = np.random.default_rng(stable_seed(seed, task.name, "split"))
    is_test = np.zeros(n_weights, dtype=bool)
    is_test[rng.choice(n_weights, size=n_test, replace=False)] = True
    return is_test


@dataclass(frozen=True)
class WeightTable:
    """The dataset D^task of one task: every weight vector with its id and split.

    D_w itself (all (x, y) for x in Omega_N) is a pure function of the task and w, so it is
    not written out; `examples_for` rebuilds it when prompts are made.
    """

    task: str
    weights: np.ndarray  # [n_weights, d] int
    is_test: np.ndarray  # [n_weights] bool

    @property
    def train_ids(self) -> np.ndarray:
        return np.flatnonzero(~self.is_test)

    @property
    def test_ids(self) -> np.ndarray:
        return np.flatnonzero(self.is_test)

    def write_tsv(self, path: str | Path) -> None:
        """Write one row per weight: weight_id, w0..w{d-1}, split (train/test)."""
        d = self.weights.shape[1]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["weight_id", *[f"w{i}" for i in range(d)], "split"])
            for wid, (w, test) in enumerate(zip(self.weights, self.is_test)):
                writer.writerow([wid, *w.tolist(), "test" if test else "train"])

    @classmethod
    def read_tsv(cls, path: str | Path, task: str) -> WeightTable:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            raise ValueError(f"{path}: empty weight table")
        d = sum(1 for key in rows[0] if key.startswith("w") and key[1:].isdigit())
        weights = np.array([[int(r[f"w{i}"]) for i in range(d)] for r in rows], dtype=np.int64)
        is_test = np.array([r["split"] == "test" for r in rows])
        if [int(r["weight_id"]) for r in rows] != list(range(len(rows))):
            raise ValueError(f"{path}: weight ids are not 0..{len(rows) - 1} in order")
        return cls(task=task, weights=weights, is_test=is_test)


def make_weight_table(task: Task, n_test: int, seed: int) -> WeightTable:
    """D^task with its seeded train/test split (paper eq. 27-28)."""
    return WeightTable(task=task.name, weights=value_grid(task), is_test=split_weights(task, n_test, seed))


def examples_for(task: Task, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D_w: every input x in Omega_N with y = f(x, w); shapes [N^d, d] and [N^d]."""
    x = value_grid(task)
    return x, task.output(x, w)
