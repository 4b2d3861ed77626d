"""Attention-pooled probes (paper §4.1, SPEC "Probe").

m(A) = W_l (W_p A^T softmax(a_{1:n})) with W_p [d_proj, d_feat], position logits a (one
per position up to the longest prompt, softmax over the prompt's own n positions) and
W_l [2, d_proj]; no biases, as in eq. 8-10. The loss is torch's MSELoss (mean over the
two coordinates).

Because a does not depend on the content, A^T softmax(a) is pooled first and projected
after: n times fewer multiply-adds than projecting every token, same function.

Probes are trained stacked: every layer of a site (and every filter variant, axis V)
is one slice of the same parameter tensors, and the summed loss gives each slice
exactly its own gradient. Adam is element-wise, so stacked training is the same
optimisation as training each probe alone, at the cost of one batched pass.

Two regimes (SPEC): ``paper`` = Adam, lr 1e-4, batch 1, a fixed number of steps
(20000 in the paper, one fresh prompt per step); ``improved`` (paper App. D.1) =
batches, a validation split of training weights, early stopping on validation MSE,
keeping each probe's best state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from minormech.prompts import Prompt, prompts_digest
from minormech.shards import Shard

log = logging.getLogger(__name__)


class StackedProbes(nn.Module):
    """V x L independent probes of one feature width, evaluated in one pass.

    Input A is [L, B, S, d] (the L layers' activations, padded to S positions); optional
    feature masks [V, L, d] zero features per variant (filtered probes) at read time.
    Output is [V, L, B, d_out].

    Each probe's initial values come from its own generator, seeded by (seed, variant id,
    layer id): a probe starts the same whether it is trained alone or in any stack, so
    stacking never changes a result (and tests can compare the two exactly).
    """

    def __init__(self, n_variants: int, n_layers: int, d_feat: int, d_proj: int, d_out: int, max_positions: int, seed: int,
                 layer_ids: Sequence[int] | None = None, variant_ids: Sequence[int] | None = None):
        super().__init__()
        layer_ids = list(range(n_layers)) if layer_ids is None else list(layer_ids)
        variant_ids = list(range(n_variants)) if variant_ids is None else list(variant_ids)
        if len(layer_ids) != n_layers or len(variant_ids) != n_variants:
            raise ValueError(f"{len(variant_ids)} variant ids and {len(layer_ids)} layer ids for {n_variants} x {n_layers} probes")
        w_proj = torch.empty(n_variants, n_layers, d_proj, d_feat)
        w_out = torch.empty(n_variants, n_layers, d_out, d_proj)
        for v, variant in enumerate(variant_ids):
            for l, layer in enumerate(layer_ids):
                generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, variant, layer]).generate_state(1)[0]))
                # nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                w_proj[v, l].uniform_(-1 / math.sqrt(d_feat), 1 / math.sqrt(d_feat), generator=generator)
                w_out[v, l].uniform_(-1 / math.sqrt(d_proj), 1 / math.sqrt(d_proj), generator=generator)
        self.w_proj = nn.Parameter(w_proj)
        self.position_logits = nn.Parameter(torch.zeros(n_variants, n_layers, max_positions))
        self.w_out = nn.Parameter(w_out)

    @property
    def max_positions(self) -> int:
        return self.position_logits.shape[-1]

    def forward(self, activations: torch.Tensor, lengths: torch.Tensor, feature_masks: torch.Tensor | None = None) -> torch.Tensor:
        n_positions = activations.shape[2]
        if n_positions > self.max_positions:
            raise ValueError(f"prompt of {n_positions} tokens but the probe has {self.max_positions} position logits")
        valid = torch.arange(n_positions, device=activations.device)[None, :] < lengths[:, None]  # [B, S]
        logits = self.position_logits[:, :, None, :n_positions].masked_fill(~valid, float("-inf"))  # [V, L, B, S]
        pooled = torch.einsum("vlbs,lbsd->vlbd", logits.softmax(-1), activations)
        if feature_masks is not None:
            pooled = pooled * feature_masks[:, :, None, :]
        projected = torch.einsum("vlbd,vlpd->vlbp", pooled, self.w_proj)
        return torch.einsum("vlbp,vlop->vlbo", projected, self.w_out)


def per_probe_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[V, L] mean squared error, mean over batch and coordinates (torch MSELoss per probe)."""
    return ((predictions - targets) ** 2).mean(dim=(-2, -1))


# ----------------------------------------------------------------------------- data


@dataclass
class ProbeBatch:
    activations: torch.Tensor  # [L, B, S, d] float32
    lengths: torch.Tensor  # [B]
    targets: torch.Tensor  # [B, 2] float32
    prompt_index: torch.Tensor  # [B] position of each prompt in ProbeData order

    def to(self, device: torch.device) -> "ProbeBatch":
        return ProbeBatch(self.activations.to(device), self.lengths.to(device), self.targets.to(device), self.prompt_index)


class _Chunk:
    """One shard's activations for one site, all requested layers stacked: [L, T, d]."""

    def __init__(self, shard: Shard, site: str, layers: Sequence[int]):
        self.values = torch.stack([shard.read(site, layer) for layer in layers])
        self.lengths = shard.lengths
        self.offsets = shard.offsets

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded [L, B, S, d] float32 and lengths [B] for the chunk's prompts `rows`."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        positions = torch.arange(width)
        index = self.offsets[rows][:, None] + positions[None, :]
        valid = positions[None, :] < lengths[:, None]
        index = torch.where(valid, index, self.offsets[rows][:, None])  # pad rows repeat a real row, masked later
        gathered = self.values[:, index.reshape(-1)].reshape(self.values.shape[0], len(rows), width, -1)
        return gathered.float(), lengths


class ProbeData:
    """The activations of one site (all layers) for a prompt set, read from its shards.

    Chunks are read from disk when first needed and kept in memory when `keep_in_memory`
    (the embedded default); otherwise each pass streams the shards one at a time, so
    memory stays at one shard whatever the set's size.
    """

    def __init__(self, shards: Sequence[Shard], prompts: Sequence[Prompt], site: str, layers: Sequence[int], keep_in_memory: bool = True):
        by_id = {p.id: p for p in prompts}
        self.shards = list(shards)
        self.site, self.layers, self.keep_in_memory = site, list(layers), keep_in_memory
        self._cache: dict[int, _Chunk] = {}
        self.chunk_prompts: list[list[Prompt]] = []
        for shard in self.shards:
            missing = [int(i) for i in shard.prompt_ids if int(i) not in by_id]
            if missing:
                raise ValueError(f"{shard.path}: prompt ids {missing[:5]} are not in the prompt file; the shard is stale: delete it and rerun")
            chunk_prompts = [by_id[int(i)] for i in shard.prompt_ids]
            if prompts_digest(chunk_prompts) != shard.header.prompts_sha256:
                raise ValueError(f"{shard.path}: made from other prompts than the prompt file holds; the shard is stale: delete it and rerun")
            self.chunk_prompts.append(chunk_prompts)
        self.prompts = [p for chunk in self.chunk_prompts for p in chunk]
        self.targets = torch.tensor([p.weight for p in self.prompts], dtype=torch.float32)
        self._chunk_start = np.cumsum([0] + [len(c) for c in self.chunk_prompts])

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def width(self) -> int:
        return self.shards[0].width(self.site, self.layers[0])

    @property
    def max_length(self) -> int:
        return max(p.length for p in self.prompts)

    def _chunk(self, i: int) -> _Chunk:
        if i in self._cache:
            return self._cache[i]
        chunk = _Chunk(self.shards[i], self.site, self.layers)
        if self.keep_in_memory:
            self._cache[i] = chunk
        return chunk

    def batches(self, batch_size: int, select: np.ndarray | None = None, rng: np.random.Generator | None = None) -> Iterator[ProbeBatch]:
        """Batches of the selected prompts (bool mask over ProbeData order); with rng, chunks
        and the prompts inside each chunk come in random order."""
        chunk_order = np.arange(len(self.shards))
        if rng is not None:
            chunk_order = rng.permutation(chunk_order)
        for c in chunk_order:
            start, stop = self._chunk_start[c], self._chunk_start[c + 1]
            rows = np.arange(stop - start)
            if select is not None:
                rows = rows[select[start:stop]]
            if len(rows) == 0:
                continue
            if rng is not None:
                rows = rng.permutation(rows)
            chunk = self._chunk(c)
            for b in range(0, len(rows), batch_size):
                part = rows[b : b + batch_size]
                activations, lengths = chunk.gather(part)
                index = torch.as_tensor(start + part)
                yield ProbeBatch(activations, lengths, self.targets[index], index)


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class ProbeTraining:
    """Training settings (config key `probe`)."""

    regime: str = "paper"  # paper | improved
    d_proj: int = 512
    lr: float = 1e-4
    batch_size: int = 1
    steps: int = 20000  # paper regime
    max_epochs: int = 50  # improved regime
    patience: int = 5
    val_fraction: float = 0.1
    seed: int = 0

    @classmethod
    def from_config(cls, probe_config: dict) -> "ProbeTraining":
        regime = probe_config["regime"]
        settings = dict(probe_config[regime])
        return cls(regime=regime, d_proj=probe_config["d_proj"], seed=probe_config["seed"], **settings)


def validation_mask(weight_ids: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Hold out whole training weights (not prompts), as the test set holds out weights."""
    unique = np.unique(np.asarray(weight_ids))
    rng = np.random.default_rng([seed, 7919])
    n_val = max(1, int(round(fraction * len(unique))))
    held_out = rng.choice(unique, size=n_val, replace=False)
    return np.isin(np.asarray(weight_ids), held_out)


@torch.no_grad()
def predict(probes: StackedProbes, data: ProbeData, batch_size: int, select: np.ndarray | None = None, feature_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions [V, L, N, 2] on the CPU, prompt indices [N]) for the selected prompts, in data order."""
    device = probes.w_proj.device
    outputs, indices = [], []
    for batch in data.batches(batch_size, select):
        batch = batch.to(device)
        outputs.append(probes(batch.activations, batch.lengths, feature_masks).cpu())
        indices.append(batch.prompt_index)
    return torch.cat(outputs, dim=2), torch.cat(indices)


def train_probes(
    train: ProbeData,
    settings: ProbeTraining,
    max_positions: int,
    feature_masks: torch.Tensor | None = None,
    device: torch.device = torch.device("cpu"),
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
    variant_ids: Sequence[int] | None = None,
) -> tuple[StackedProbes, dict]:
    """Train V x L probes on `train` on `device` (V = number of feature masks [V, L, d], or 1
    without masks); returns the probes and a summary of the run. `variant_ids` name the
    masks' variants for seeding (default 0..V-1); layers are named by `train.layers`."""
    d_feat = train.width
    n_variants = 1 if feature_masks is None else feature_masks.shape[0]
    probes = StackedProbes(n_variants, len(train.layers), d_feat, settings.d_proj, 2, max_positions, settings.seed,
                           layer_ids=train.layers, variant_ids=variant_ids).to(device)
    if feature_masks is not None:
        feature_masks = feature_masks.to(device)
    optimizer = torch.optim.Adam(probes.parameters(), lr=settings.lr, fused=True)  # one kernel for all parameters: ~30% faster steps here
    rng = np.random.default_rng([settings.seed, 104729])

    def step(batch: ProbeBatch) -> torch.Tensor:
        batch = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        losses = per_probe_mse(probes(batch.activations, batch.lengths, feature_masks), batch.targets)
        losses.sum().backward()
        optimizer.step()
        return losses.detach()

    if settings.regime == "paper":
        return probes, _train_fixed_steps(train, settings, rng, step, progress)
    if settings.regime == "improved":
        return probes, _train_early_stopping(probes, train, settings, rng, step, feature_masks, progress)
    raise ValueError(f"probe.regime: unknown regime {settings.regime!r}; choose paper or improved")


def _train_fixed_steps(train, settings, rng, step, progress) -> dict:
    """The paper's regime: `steps` optimizer steps of `batch_size` prompts, cycling through
    the training prompts in a fresh random order each pass."""

    def endless() -> Iterator[ProbeBatch]:
        while True:
            yield from train.batches(settings.batch_size, rng=rng)

    batches = endless()
    last = None
    for _ in progress(range(settings.steps), settings.steps):
        last = step(next(batches))
    passes = settings.steps * settings.batch_size / len(train)
    return {"regime": "paper", "steps": settings.steps, "passes_over_data": passes, "final_train_loss": last.mean().item()}


def _train_early_stopping(probes, train, settings, rng, step, feature_masks, progress) -> dict:
    """Batches over the training weights minus a validation split; after each epoch every
    probe whose validation MSE improved keeps its parameters; training stops when no probe
    improved for `patience` epochs. Each probe ends at its own best epoch."""
    is_val = validation_mask([p.weight_id for p in train.prompts], settings.val_fraction, settings.seed)
    best_mse = None
    best_state = {name: p.detach().clone() for name, p in probes.named_parameters()}
    best_epoch = torch.zeros(probes.w_proj.shape[:2], dtype=torch.long)
    epochs_without_gain, steps = 0, 0
    for epoch in progress(range(settings.max_epochs), settings.max_epochs):
        for batch in train.batches(settings.batch_size, select=~is_val, rng=rng):
            step(batch)
            steps += 1
        predictions, index = predict(probes, train, 256, select=is_val, feature_masks=feature_masks)
        val_mse = per_probe_mse(predictions, train.targets[index])
        improved = val_mse < best_mse if best_mse is not None else torch.ones_like(val_mse, dtype=torch.bool)
        if improved.any():
            best_mse = val_mse if best_mse is None else torch.where(improved, val_mse, best_mse)
            best_epoch[improved] = epoch
            for name, param in probes.named_parameters():
                mask = improved.to(param.device)
                best_state[name][mask] = param.detach()[mask]
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
        log.info("epoch %d: mean validation MSE %.3f (best %.3f)", epoch, val_mse.mean(), best_mse.mean())
        if epochs_without_gain >= settings.patience:
            break
    with torch.no_grad():
        for name, param in probes.named_parameters():
            param.copy_(best_state[name])
    return {
        "regime": "improved",
        "epochs": epoch + 1,
        "steps": steps,
        "n_validation_prompts": int(is_val.sum()),
        "best_epoch": best_epoch.tolist(),
        "best_validation_mse": best_mse.tolist(),
    }


def mean_baseline_mse(train_weights: torch.Tensor, test_targets: torch.Tensor) -> float:
    """MSE of always predicting the mean training weight (about 44 for uniform 0..22)."""
    return ((test_targets - train_weights.float().mean(0)) ** 2).mean().item()
