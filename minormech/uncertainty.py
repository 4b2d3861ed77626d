"""Intervals for every number a figure or summary shows (config key `uncertainty`).

The unit that varies between two runs of an experiment is what gets resampled: for probes
the held-out test weights (all prompts of one weight go together, as the test set holds
out whole weights) and the probe seeds; for patching the prompt pairs. A percentile
bootstrap then gives the interval of the mean over seeds and items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """mean, low and high of the same shape: the plain mean over seeds and items, and the
    percentile bootstrap interval around it."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def columns(self, name: str, index=()) -> dict[str, float]:
        """{name: mean, name_ci_low: low, name_ci_high: high} at `index`, for a table row."""
        return {
            name: float(self.mean[index]),
            f"{name}_ci_low": float(self.low[index]),
            f"{name}_ci_high": float(self.high[index]),
        }


@dataclass(frozen=True)
class Bootstrap:
    """The bootstrap settings of one run (config keys `uncertainty.bootstrap`,
    `uncertainty.level` and `seed`). Probes, patching and the summary all draw with these,
    so two numbers computed from the same items see the same resamples."""

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0

    def __call__(self, values: np.ndarray, groups: np.ndarray | None = None, seed_axis: bool = False) -> Interval:
        """bootstrap_interval of `values` with these settings."""
        return bootstrap_interval(values, groups, self.n_boot, self.level, self.seed, seed_axis)


def bootstrap_interval(
    values: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    seed_axis: bool = False,
) -> Interval:
    """Mean of `values` over its last axis (items) and, with `seed_axis`, its first (probe
    seeds), with a percentile bootstrap interval at `level`.

    Each resample draws the item groups (`groups[i]` = the group of item i, e.g. its test
    weight; None = every item alone) with replacement, and the seeds with replacement; the
    statistic is the mean over the drawn seeds of each seed's mean over the drawn items.
    Paired comparisons (selectivity, filtered variants, patching vs control) pass the
    per-item differences, so both sides see the same resamples.
    """
    values = np.asarray(values, dtype=np.float64)
    if not seed_axis:
        values = values[None]
    n_seeds, n_items = values.shape[0], values.shape[-1]
    if n_items == 0:
        raise ValueError("bootstrap_interval: no items to resample")
    codes = np.arange(n_items) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    if len(codes) != n_items:
        raise ValueError(f"bootstrap_interval: {len(codes)} group labels for {n_items} items")
    n_groups = int(codes.max()) + 1
    membership = np.zeros((n_items, n_groups))
    membership[np.arange(n_items), codes] = 1.0
    group_sums = values @ membership  # [S, ..., G]
    group_sizes = membership.sum(0)  # [G]
    rng = np.random.default_rng([seed, 2718])
    group_draws = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=n_boot).astype(np.float64)  # [B, G]
    seed_draws = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot).astype(np.float64)  # [B, S]
    per_seed = np.einsum("bg,s...g->bs...", group_draws, group_sums) / (group_draws @ group_sizes).reshape(
        (n_boot, 1) + (1,) * (values.ndim - 2)
    )
    resampled = np.einsum("bs,bs...->b...", seed_draws, per_seed) / n_seeds
    tail = (1 - level) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail], axis=0)
    return Interval(values.mean(axis=(0, -1)), low, high)
