"""Linear reference readouts beside the attention-pooled probe (§4.1): per (site, layer), a
ridge regression of w on the mean-pooled activations of a prompt's tokens and one on the
last token's activations (scikit-learn's Ridge, its penalty chosen by cross-validation as
RidgeCV would choose it, in closed form: cross_validated_alpha).

They answer the first question a reader asks of the paper's probe: does attention pooling
read more from a layer than a linear readout of its pooled activations? Both readouts use
the probes' own prompts: fitted on every probe-training prompt (or the first
`max_train_prompts` of them) and scored on the same held-out test weights, so their test
MSE sits in the same table with the same bootstrap interval.

The pooled vectors are taken from the batches the probes train on, as they pass
(`PoolingTap`): in stream mode that is the same pass over the model, so the readouts cost
no forward of their own (prompts a paper-regime run never drew are read once more at the
end). The ridge penalty is chosen per (site, layer, pooling) from `alphas` by
cross-validation over folds of whole weight vectors (GroupKFold on the weight ids), so no
weight has prompts on both sides of a fold: a readout cannot win by recognising a weight it
has seen. Features are standardised with the training prompts' mean and standard deviation
first (ridge penalises every coefficient alike, and activation dimensions differ in scale
by orders of magnitude). Test prompts are predicted batch by batch as they pass, so only
the training prompts' pooled vectors are held: 2 x prompts x layers x width float32 per
site.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from minormech.probes import ActivationSource, ProbeBatch, batch_order


@dataclass(frozen=True)
class RidgeSettings:
    """Config `probe.ridge`: the penalties tried, the cross-validation folds and the cap
    on training prompts (None: all of them)."""

    alphas: tuple[float, ...]
    folds: int
    max_train_prompts: int | None

    @classmethod
    def from_config(cls, ridge: dict) -> RidgeSettings | None:
        """The settings, or None when `probe.ridge.enabled` is false."""
        if not ridge["enabled"]:
            return None
        return cls(tuple(float(a) for a in ridge["alphas"]), int(ridge["folds"]), ridge["max_train_prompts"])


def pool(batch: ProbeBatch, site: str) -> dict[str, torch.Tensor]:
    """{pooling: [L, B, d] float32 on the CPU} of one site for the prompts of a batch,
    computed from its packed (unpadded) activations."""
    packed = batch.packed
    values = packed.values[site]
    starts = packed.offsets[batch.rows].tolist()
    lengths = packed.lengths[batch.rows].tolist()
    means = [values[:, s : s + n].float().mean(1) for s, n in zip(starts, lengths)]
    lasts = [values[:, s + n - 1].float() for s, n in zip(starts, lengths)]
    return {"mean": torch.stack(means, 1).cpu(), "last": torch.stack(lasts, 1).cpu()}


@dataclass
class RidgeReadout:
    """The fitted readouts of one (site, pooling): per layer the standardisation, the
    coefficients and the chosen penalty."""

    mean: torch.Tensor  # [L, d]
    scale: torch.Tensor  # [L, d]
    coef: torch.Tensor  # [L, d, k]
    intercept: torch.Tensor  # [L, k]
    alphas: list[float]

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """[L, B, k] predictions for [L, B, d] pooled features."""
        standardised = (features - self.mean[:, None]) / self.scale[:, None]
        return torch.bmm(standardised, self.coef) + self.intercept[:, None]


def cross_validated_alpha(x: np.ndarray, y: np.ndarray, splits, alphas: Sequence[float]) -> float:
    """The penalty of `alphas` with the lowest cross-validated MSE over `splits` (train,
    held-out index pairs): the mean over folds of each fold's held-out MSE, as RidgeCV
    scores a given cv. Each fold is solved for every penalty at once from one SVD of its
    centred training rows (ridge with an intercept: beta = V diag(s / (s^2 + alpha)) U^T y),
    where RidgeCV refits every (penalty, fold)."""
    alphas = np.asarray(alphas, dtype=np.float64)
    fold_mse = []
    for train, held_out in splits:
        x_mean, y_mean = x[train].mean(0), y[train].mean(0)
        u, singular, vt = np.linalg.svd(x[train] - x_mean, full_matrices=False)
        projected = (x[held_out] - x_mean) @ vt.T  # [n_held_out, r]
        uty = u.T @ (y[train] - y_mean)  # [r, k]
        shrink = singular[None, :] / (singular[None, :] ** 2 + alphas[:, None])  # [A, r]
        predictions = np.einsum("nr,ar,rk->ank", projected, shrink, uty) + y_mean
        fold_mse.append(((predictions - y[held_out]) ** 2).mean(axis=(1, 2)))
    return float(alphas[int(np.argmin(np.mean(fold_mse, axis=0)))])


def fit_readout(features: torch.Tensor, targets: torch.Tensor, groups: np.ndarray, settings: RidgeSettings):
    """RidgeReadout of [L, N, d] pooled training features for targets [N, k]: per layer,
    scikit-learn's Ridge with the penalty chosen by cross-validation over GroupKFold folds
    of the weight ids `groups` (cross_validated_alpha).

    Runs under one BLAS thread: at the embedded model's sizes (about 100 x 192 per fold) a
    multi-threaded BLAS spends more time handing work between threads than computing (3.0 s
    against 0.59 s for the 30 layers of one (site, pooling) on 2 otherwise idle cores)."""
    folds = min(settings.folds, len(np.unique(groups)))
    if folds < 2:
        raise ValueError(f"probe.ridge: the training prompts hold {folds} weight vector(s); cross-validation needs 2")
    y = targets.double().numpy()
    parts = {"mean": [], "scale": [], "coef": [], "intercept": []}
    alphas = []
    with threadpool_limits(1):
        for layer_features in features:
            x = layer_features.double()
            mean, scale = x.mean(0), x.std(0)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            standardised = ((x - mean) / scale).numpy()
            splits = list(GroupKFold(n_splits=folds).split(standardised, y, groups))
            alphas.append(cross_validated_alpha(standardised, y, splits, settings.alphas))
            model = Ridge(alpha=alphas[-1]).fit(standardised, y)
            parts["mean"].append(mean.float())
            parts["scale"].append(scale.float())
            parts["coef"].append(torch.as_tensor(model.coef_.T, dtype=torch.float32))
            parts["intercept"].append(torch.as_tensor(model.intercept_, dtype=torch.float32))
    return RidgeReadout(**{key: torch.stack(value) for key, value in parts.items()}, alphas=alphas)


class PoolingTap:
    """An ActivationSource that passes on every batch of the source it wraps and, on the
    way, keeps the pooled vectors of the training prompts it is asked to keep (`record`)
    or predicts the prompts with fitted readouts (`predict_with`)."""

    def __init__(self, source: ActivationSource, sites: Sequence[str]):
        self.source, self.sites = source, list(sites)
        self.kept: dict[tuple[str, str], torch.Tensor] = {}
        self.seen = np.zeros(len(source.prompts), dtype=bool)
        self.wanted = np.zeros(len(source.prompts), dtype=bool)
        self.readouts: dict[tuple[str, str], RidgeReadout] = {}
        self.predictions: dict[tuple[str, str], torch.Tensor] = {}

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def record(self, limit: int | None) -> PoolingTap:
        """Keep the pooled vectors of the first `limit` prompts (all when None)."""
        self.wanted[: len(self.wanted) if limit is None else limit] = True
        return self

    def predict_with(self, readouts: dict[tuple[str, str], RidgeReadout]) -> PoolingTap:
        self.readouts = readouts
        return self

    def read(self, order: Iterable[np.ndarray], sites: Sequence[str] | None = None) -> Iterator[ProbeBatch]:
        for batch in self.source.read(order, sites):
            self._take(batch)
            yield batch

    def _take(self, batch: ProbeBatch) -> None:
        index = batch.prompt_index.numpy()
        new = self.wanted[index] & ~self.seen[index]
        predict = bool(self.readouts) and not self.seen[index].all()
        if not new.any() and not predict:
            return
        for site in self.sites:
            if site not in batch.packed.values:
                continue
            for pooling, values in pool(batch, site).items():
                if new.any():
                    kept = self.kept.setdefault(
                        (site, pooling), torch.zeros(values.shape[0], int(self.wanted.sum()), values.shape[2])
                    )  # the wanted prompts are the first ones, so a prompt's index is its row here
                    kept[:, index[new]] = values[:, torch.as_tensor(new)]
                if predict:
                    self._predict(site, pooling, values, index)
        self.seen[index] = True

    def _predict(self, site: str, pooling: str, values: torch.Tensor, index: np.ndarray) -> None:
        readout = self.readouts[site, pooling]
        predictions = self.predictions.setdefault(
            (site, pooling), torch.full((values.shape[0], len(self.wanted), readout.coef.shape[2]), float("nan"))
        )
        predictions[:, index] = readout.predict(values)

    def fill_missing(self, batch_size: int) -> None:
        """Read the wanted prompts no batch has brought (a paper-regime run that drew fewer
        steps than there are prompts) so that every wanted prompt's vectors are kept."""
        missing = self.wanted & ~self.seen
        if missing.any():
            for _ in self.read(batch_order(self.source.chunk_sizes, batch_size, missing), self.sites):
                pass

    def fit(self, settings: RidgeSettings) -> dict[tuple[str, str], RidgeReadout]:
        """Fitted readouts of every (site, pooling) from the kept training prompts."""
        rows = np.flatnonzero(self.wanted)
        targets = self.source.targets[rows]
        groups = self.source.weight_ids[rows].numpy()
        return {key: fit_readout(kept, targets, groups, settings) for key, kept in self.kept.items()}
