"""The ridge reference readouts (minormech.ridge_probes) on synthetic activations whose
answer is known, and the tap that takes their pooled vectors from the probes' batches."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold
from test_probes import _synthetic

from minormech.probe_results import squared_errors
from minormech.probes import ProbeGroup, ProbeTraining, batch_order, train_probe_groups
from minormech.ridge_probes import PoolingTap, RidgeSettings, cross_validated_alpha, fit_readout

SETTINGS = RidgeSettings(alphas=(0.1, 1.0, 10.0, 100.0, 1000.0), folds=5, max_train_prompts=None)


def test_ridge_reads_w_where_the_layer_carries_it_and_nothing_where_it_does_not(tmp_path):
    """Layer 1 carries w linearly in every token, layer 0 is noise: the mean-pooled readout
    is near exact at layer 1 and no better than the training mean at layer 0."""
    layers = [0, 1]
    train = PoolingTap(_synthetic(tmp_path, 400, layers, 16, 0, "train", signal_layers={1}), ["k"]).record(None)
    test = PoolingTap(_synthetic(tmp_path, 100, layers, 16, 1, "test", signal_layers={1}), ["k"])
    for _ in train.read(batch_order(train.chunk_sizes, 32)):
        pass
    test.predict_with(train.fit(SETTINGS))
    for _ in test.read(batch_order(test.chunk_sizes, 32)):
        pass
    baseline = squared_errors(train.targets.mean(0).expand_as(test.targets), test.targets).mean()
    mean_mse = squared_errors(test.predictions["k", "mean"], test.targets).mean(-1)
    assert mean_mse[1] < 0.02 * baseline, (mean_mse, baseline)
    assert mean_mse[0] > 0.9 * baseline, (mean_mse, baseline)
    last_mse = squared_errors(test.predictions["k", "last"], test.targets).mean(-1)
    assert last_mse[1] < 0.1 * baseline  # one token's noise is larger than the mean's, but w is there


def test_the_tap_changes_no_batch_and_keeps_each_prompts_mean_and_last_token(tmp_path):
    data = _synthetic(tmp_path, 30, [0, 3], 8, 0, "train", signal_layers={3})
    tap = PoolingTap(data, ["k"]).record(20)  # the first 20 prompts
    order = list(batch_order(data.chunk_sizes, 7, rng=np.random.default_rng(0)))
    for tapped, plain in zip(tap.read(order), data.read(order), strict=True):
        assert torch.equal(tapped.activations("k"), plain.activations("k"))
    packed = data._chunk(0)
    for i in (0, 19):
        start, length = int(packed.offsets[i]), int(packed.lengths[i])
        tokens = packed.values["k"][:, start : start + length].float()  # [L, n, d]
        torch.testing.assert_close(tap.kept["k", "mean"][:, i], tokens.mean(1))
        assert torch.equal(tap.kept["k", "last"][:, i], tokens[:, -1])
    assert tap.kept["k", "mean"].shape == (2, 20, 8)


def test_a_paper_run_that_drew_few_prompts_reads_the_rest_once_for_the_ridge(tmp_path):
    """The paper regime's fixed steps may draw fewer prompts than there are; the tap reads
    the ones never drawn once at the end, so the readout sees every training prompt."""
    data = _synthetic(tmp_path, 40, [0], 8, 0, "train", signal_layers={0})
    tap = PoolingTap(data, ["k"]).record(None)
    settings = ProbeTraining(regime="paper", d_proj=4, lr=1e-3, batch_size=1, steps=10, seed=0)
    train_probe_groups(tap, [ProbeGroup("k")], settings, max_positions=12)
    assert 0 < tap.seen.sum() <= 10
    tap.fill_missing(8)
    assert tap.seen.all() and not (tap.kept["k", "mean"] == 0).all(-1).any()


def test_cross_validation_folds_hold_whole_weights(tmp_path):
    """Features that identify each weight vector but do not carry w linearly: a readout that
    recognised weights seen in training would win inside a fold split by prompts. Folds of
    whole weights see through it and choose the largest penalty, predicting the mean."""
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 23, size=(20, 2)).astype(np.float32)
    codes = rng.normal(size=(20, 64)).astype(np.float32)  # a random code per weight
    groups = np.repeat(np.arange(20), 10)
    features = torch.as_tensor(codes[groups] + 0.01 * rng.normal(size=(200, 64)).astype(np.float32))[None]
    readout = fit_readout(features, torch.as_tensor(weights[groups]), groups, SETTINGS)
    assert readout.alphas == [max(SETTINGS.alphas)]


@pytest.mark.parametrize("seed", range(6))
def test_the_closed_form_cross_validation_chooses_what_ridgecv_chooses(seed):
    """cross_validated_alpha solves each fold for every penalty from one SVD; RidgeCV with
    the same GroupKFold folds and MSE scoring refits each (penalty, fold) and must choose
    the same penalty, on problems whose best penalty varies from small to large."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 50))
    y = x @ rng.normal(size=(50, 2)) * rng.uniform(0, 1) + rng.normal(size=(120, 2)) * rng.uniform(0.5, 5)
    groups = rng.integers(0, 30, 120)
    splits = list(GroupKFold(n_splits=5).split(x, y, groups))
    reference = RidgeCV(alphas=SETTINGS.alphas, cv=splits, scoring="neg_mean_squared_error").fit(x, y)
    assert cross_validated_alpha(x, y, splits, SETTINGS.alphas) == reference.alpha_
