"""Probe controls that need no model (config key `controls`).

- Least-squares ceiling: how well w can be recovered from a test prompt's own examples by
  someone who knows the task's function. A probe near the training-mean baseline decodes
  nothing; one near this ceiling decodes what the prompt determines.
- Control task (Hewitt and Liang 2019): the target w replaced by pi(w) for a fixed random
  bijection pi of the weight grid. A probe that learns pi(w) as well as w memorises prompt
  identities rather than reading a task variable; selectivity = control MSE - task MSE.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minormech.prompts import Prompt
from minormech.tasks import Task, stable_seed, value_grid


def prompt_examples(prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
    """The complete (x, y) examples the prompt shows, [k, d] and [k], from its record; the
    query (whose answer the prompt ends before) is not among them: it is what the model,
    and the least-squares ceiling, must answer."""
    if len(prompt.example_y) < 2:
        return np.zeros((0, len(prompt.weight)), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.array(prompt.example_x[:-1], dtype=np.int64), np.array(prompt.example_y[:-1], dtype=np.int64)


def least_squares_weight(task: Task, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The w that best explains the examples (x, y) under the task's function.

    Linear regression: the least-squares solution (exact for two independent examples;
    the minimum-norm one when the examples do not determine w). Other tasks: the grid
    weights with the smallest squared error, averaged when several fit equally well (the
    MSE-optimal guess among them). Without examples: the grid's centre.
    """
    grid = value_grid(task).astype(np.float64)
    if len(y) == 0:
        return grid.mean(0)
    if task.name == "LR":
        return np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    residuals = ((task.output(x[None, :, :], grid[:, None, :].astype(np.int64)) - y[None, :]) ** 2).sum(1)
    return grid[residuals == residuals.min()].mean(0)


def least_squares_predictions(task: Task, prompts: Sequence[Prompt]) -> np.ndarray:
    """[N, d] least-squares estimates of w, one per prompt."""
    return np.stack([least_squares_weight(task, *prompt_examples(prompt)) for prompt in prompts])


def control_permutation(n_weights: int, seed: int, task: str) -> np.ndarray:
    """pi as an index array: weight id i gets the target of weight id pi[i] (a fixed random
    bijection of the grid, seeded per task)."""
    return np.random.default_rng(stable_seed(seed, task, "control_task")).permutation(n_weights)


def control_targets(weights: np.ndarray, seed: int, task: str) -> np.ndarray:
    """[n_weights, d] control-task target of every weight id: pi(w) = weights[pi[id]]."""
    return np.asarray(weights)[control_permutation(len(weights), seed, task)]
