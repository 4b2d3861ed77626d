"""Rank and filter against hand-worked vectors (paper eq. 15-17, 34-35)."""

import numpy as np
import pytest

from minormech.ranking import filter_mask, rank, rank_difference


def test_rank_smallest_is_one_largest_is_d():
    rng = np.random.default_rng(0)
    assert rank(np.array([0.3, -1.0, 5.0, 2.0]), rng).tolist() == [2, 1, 4, 3]


def test_ties_are_broken_at_random_but_seeded():
    x = np.array([1.0, 1.0, 1.0, 0.0])
    seen = {tuple(rank(x, np.random.default_rng(s)).tolist()) for s in range(30)}
    assert all(r[3] == 1 and sorted(r[:3]) == [2, 3, 4] for r in seen)
    assert len(seen) > 1  # different seeds order the tie differently
    assert rank(x, np.random.default_rng(5)).tolist() == rank(x, np.random.default_rng(5)).tolist()


def test_rank_difference_large_means_task1():
    fa_lr = np.array([10.0, 0.0, 5.0])
    fa_md = np.array([0.0, 10.0, 5.0])
    xi = rank_difference(fa_lr, fa_md, np.random.default_rng(0))
    assert xi.tolist() == [3 - 1, 1 - 3, 0]


def test_filter_hand_worked():
    xi = np.array([5, -3, 0, 2])  # descending order: 5, 2, 0, -3 -> q = 1/4, 4/4, 3/4, 2/4
    assert filter_mask(xi, ">=", 0.5).tolist() == [True, False, False, True]  # LR half
    assert filter_mask(xi, "<=", 0.5).tolist() == [False, True, True, True]  # MD half + boundary
    assert filter_mask(xi, ">=", 0.25).tolist() == [True, False, False, False]
    assert filter_mask(xi, "<=", 0.75).tolist() == [False, True, True, False]


def test_filter_with_ties_keeps_tied_features_together():
    xi = np.array([1, 1, 0, 0])  # q = 2/4, 2/4, 4/4, 4/4
    assert filter_mask(xi, ">=", 0.25).tolist() == [False, False, False, False]
    assert filter_mask(xi, ">=", 0.5).tolist() == [True, True, False, False]
    assert filter_mask(xi, "<=", 0.75).tolist() == [False, False, True, True]


@pytest.mark.parametrize("d", [7, 64, 1024, 3072])
@pytest.mark.parametrize("h", [0.25, 0.5, 0.75])
def test_kept_counts_without_ties(d, h):
    xi = np.random.default_rng(d).permutation(d) - d // 2  # distinct values
    assert filter_mask(xi, ">=", h).sum() == np.floor(h * d)
    assert filter_mask(xi, "<=", h).sum() == d - np.ceil(h * d) + 1


def test_unknown_op():
    with pytest.raises(ValueError, match="filter op"):
        filter_mask(np.zeros(3), "<", 0.5)
