"""Rank-difference maps and the feature filter (paper §4.2.2 eq. 15-17, 34-35).

rank(x) maps the smallest element to 1 and the largest to d, as the paper's text and
eq. 41 require (its eq. 15 prints the reverse). Ties are broken at random by a seeded
generator. xi = rank(FA_task1) - rank(FA_task2): large xi = more important for task 1.

Filter (eq. 35, taken literally): q_i = #{j : xi_i <= xi_j} / d, keep feature i when
h (op) q_i. Small q = large xi, so (>=, 0.5) keeps the half most important for task 1
and (<=, 0.5) the half most important for task 2. Features tied in xi share q and are
kept or dropped together.
"""

from __future__ import annotations

import numpy as np
import torch

from minormech.hooks import hook_name

#: The filtered probes (eq. 35): (op, h) applied to each task's probe.
FILTER_VARIANTS: tuple[tuple[str, float], ...] = ((">=", 0.5), ("<=", 0.5), (">=", 0.25), ("<=", 0.75))


def variant_name(op: str, h: float) -> str:
    return f"{'ge' if op == '>=' else 'le'}{h:g}"


#: The names of FILTER_VARIANTS, in order (the variants of a filtered probe table).
FILTER_VARIANT_NAMES: tuple[str, ...] = tuple(variant_name(op, h) for op, h in FILTER_VARIANTS)
#: Each task's own half of the features (task 1's, task 2's): figure 3 and eq. 41.
HALVES: tuple[str, str] = (variant_name(">=", 0.5), variant_name("<=", 0.5))
#: Each task's own most important quarter: figure 4 and H3.
QUARTERS: tuple[str, str] = (variant_name(">=", 0.25), variant_name("<=", 0.75))
#: The variants each filtered-probe figure draws.
FIGURE_VARIANTS: dict[int, tuple[str, str]] = {3: HALVES, 4: QUARTERS}


def rank(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1 for the smallest element .. d for the largest; ties in random (seeded) order."""
    values = np.asarray(values)
    tie_break = rng.permutation(values.shape[-1])
    order = np.lexsort((tie_break, values))
    ranks = np.empty(values.shape[-1], dtype=np.int64)
    ranks[order] = np.arange(1, values.shape[-1] + 1)
    return ranks


def rank_difference(fa_task1: np.ndarray, fa_task2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """xi = rank(FA_task1) - rank(FA_task2) (eq. 17), integers in -(d-1)..(d-1)."""
    return rank(fa_task1, rng) - rank(fa_task2, rng)


def filter_mask(xi: np.ndarray, op: str, h: float) -> np.ndarray:
    """Boolean keep-mask of eq. 35 over the features of one (site, layer)."""
    xi = np.asarray(xi)
    d = xi.shape[-1]
    sorted_xi = np.sort(xi)
    q = (d - np.searchsorted(sorted_xi, xi, side="left")) / d  # #{j: xi_j >= xi_i} / d
    if op == ">=":
        return h >= q
    if op == "<=":
        return h <= q
    raise ValueError(f"filter op must be '>=' or '<=', got {op!r}")


def site_keep_masks(xi: dict[str, torch.Tensor], site: str, layers: list[int], op: str, h: float) -> torch.Tensor:
    """[layers, width] bool keep-masks of one site from a saved xi map (hook name -> xi)."""
    return torch.stack([torch.as_tensor(filter_mask(xi[hook_name(site, layer)].numpy(), op, h)) for layer in layers])
