"""Attention-pooled probes (paper §4.1, eq. 8-13).

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

Activations come from an ActivationSource: ProbeData reads shards (one site per job),
minormech.stream.StreamSource runs the model (every site of a (model, task) in one job).
Both serve the batches of `batch_order`, so the two train the same probes alike.

Two regimes: ``paper`` = Adam, lr 1e-4, batch 1, a fixed number of steps
(20000 in the paper, one fresh prompt per step); ``improved`` (paper App. D.1) =
batches, a validation split of training weights, early stopping on validation MSE,
keeping each probe's best state.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from minormech.prompts import Prompt, prompts_digest
from minormech.shards import Shard, packed_offsets

log = logging.getLogger(__name__)


class StackedProbes(nn.Module):
    """V x L independent probes of one feature width, evaluated in one pass.

    Input A is [L, B, S, d] (the L layers' activations, padded to S positions); optional
    feature masks [V, L, d] zero features per variant (filtered probes) at read time.
    Output is [V, L, B, d_out].

    Each probe's initial values come from its own generator, seeded by (init seed, variant
    id, layer id): a probe starts the same whether it is trained alone or in any stack, so
    stacking never changes a result (and tests can compare the two exactly). `init_seeds`
    gives each variant its own init seed (probe seeds are variants; default: `seed`).

    W_p is stored transposed, [V, L, d_feat, d_proj], so that its gradient comes out of
    the batched matmul in the parameter's own layout: stored as [.., d_proj, d_feat],
    autograd copied every step's gradient (the size of W_p) into that layout, 13% of a
    stream pass over all five sites on the CPU (torch profiler).
    """

    def __init__(
        self,
        n_variants: int,
        n_layers: int,
        d_feat: int,
        d_proj: int,
        d_out: int,
        max_positions: int,
        seed: int,
        layer_ids: Sequence[int] | None = None,
        variant_ids: Sequence[int] | None = None,
        init_seeds: Sequence[int] | None = None,
    ):
        super().__init__()
        layer_ids = list(range(n_layers)) if layer_ids is None else list(layer_ids)
        variant_ids = list(range(n_variants)) if variant_ids is None else list(variant_ids)
        init_seeds = [seed] * n_variants if init_seeds is None else list(init_seeds)
        if len(layer_ids) != n_layers or len(variant_ids) != n_variants or len(init_seeds) != n_variants:
            raise ValueError(
                f"{len(variant_ids)} variant ids, {len(init_seeds)} init seeds and "
                f"{len(layer_ids)} layer ids for {n_variants} x {n_layers} probes"
            )
        w_proj = torch.empty(
            n_variants, n_layers, d_proj, d_feat
        )  # drawn as nn.Linear(d_feat, d_proj).weight, stored transposed
        w_out = torch.empty(n_variants, n_layers, d_out, d_proj)
        for v, (variant, init_seed) in enumerate(zip(variant_ids, init_seeds)):
            for l, layer in enumerate(layer_ids):
                generator = torch.Generator().manual_seed(
                    int(np.random.SeedSequence([init_seed, variant, layer]).generate_state(1)[0])
                )
                # nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                w_proj[v, l].uniform_(-1 / math.sqrt(d_feat), 1 / math.sqrt(d_feat), generator=generator)
                w_out[v, l].uniform_(-1 / math.sqrt(d_proj), 1 / math.sqrt(d_proj), generator=generator)
        self.w_proj = nn.Parameter(w_proj.transpose(-1, -2).contiguous())  # [V, L, d_feat, d_proj]
        self.position_logits = nn.Parameter(torch.zeros(n_variants, n_layers, max_positions))
        self.w_out = nn.Parameter(w_out)

    @property
    def max_positions(self) -> int:
        return self.position_logits.shape[-1]

    def forward(
        self, activations: torch.Tensor, lengths: torch.Tensor, feature_masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        n_positions = activations.shape[2]
        if n_positions > self.max_positions:
            raise ValueError(f"prompt of {n_positions} tokens but the probe has {self.max_positions} position logits")
        valid = torch.arange(n_positions, device=activations.device)[None, :] < lengths[:, None]  # [B, S]
        logits = self.position_logits[:, :, None, :n_positions].masked_fill(~valid, float("-inf"))  # [V, L, B, S]
        pooled = torch.einsum("vlbs,lbsd->vlbd", logits.softmax(-1), activations)
        if feature_masks is not None:
            pooled = pooled * feature_masks[:, :, None, :]
        projected = torch.einsum("vlbd,vldp->vlbp", pooled, self.w_proj)
        return torch.einsum("vlbp,vlop->vlbo", projected, self.w_out)


def per_probe_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[V, L] mean squared error, mean over batch and coordinates (torch MSELoss per probe)."""
    return ((predictions - targets) ** 2).mean(dim=(-2, -1))


# ----------------------------------------------------------------------------- data


class PackedActivations:
    """Activations of consecutive prompts, all requested layers stacked and every token of
    every prompt packed without padding: values[site] is [L, T, d] (a shard chunk, or one
    group of forward passes in stream mode)."""

    def __init__(self, values: dict[str, torch.Tensor], lengths: torch.Tensor):
        self.values, self.lengths, self.offsets = values, lengths, packed_offsets(lengths)

    @classmethod
    def from_shard(cls, shard: Shard, site: str, layers: Sequence[int]) -> PackedActivations:
        return cls({site: torch.stack([shard.read(site, layer) for layer in layers])}, shard.lengths)

    def gather(self, site: str, rows: np.ndarray) -> torch.Tensor:
        """Padded [L, B, S, d] float32 of one site for the prompts `rows` (S = their longest)."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        positions = torch.arange(width)
        index = self.offsets[rows][:, None] + positions[None, :]
        valid = positions[None, :] < lengths[:, None]
        index = torch.where(valid, index, self.offsets[rows][:, None])  # pad rows repeat a real row, masked later
        values = self.values[site]
        return values[:, index.reshape(-1).to(values.device)].reshape(values.shape[0], len(rows), width, -1).float()


class ProbeBatch:
    """Prompts of one optimizer step (or evaluation batch): lengths, targets (the weights
    w) and weight ids, and each site's padded float32 activations [L, B, S, d], gathered
    when a probe stack asks for them. Only the site last asked for is kept, so a batch
    holds one site's float32 copy at a time (stacks of one site come one after another)."""

    def __init__(
        self,
        packed: PackedActivations,
        rows: np.ndarray,
        targets: torch.Tensor,
        weight_ids: torch.Tensor,
        prompt_index: torch.Tensor,
        device: torch.device | None = None,
    ):
        self.packed, self.rows, self.weight_ids, self.prompt_index, self.device = (
            packed,
            rows,
            weight_ids,
            prompt_index,
            device,
        )
        self.lengths = packed.lengths[rows].to(device) if device is not None else packed.lengths[rows]
        self.targets = targets.to(device) if device is not None else targets
        self._kept: tuple[str, torch.Tensor] | None = None

    def to(self, device: torch.device) -> ProbeBatch:
        return ProbeBatch(self.packed, self.rows, self.targets, self.weight_ids, self.prompt_index, device)

    def activations(self, site: str) -> torch.Tensor:
        if self._kept is None or self._kept[0] != site:
            self._kept = None  # free the previous site's copy before making the next
            values = self.packed.gather(site, self.rows)
            self._kept = (site, values.to(self.device) if self.device is not None else values)
        return self._kept[1]


def batch_order(
    chunk_sizes: Sequence[int],
    batch_size: int,
    select: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> Iterator[np.ndarray]:
    """One pass's batches as prompt indices (bool mask `select` over all prompts). Prompts
    are split into chunks of `chunk_sizes` (the shards of shard mode); with rng, chunks and
    the prompts inside each chunk come in random order, and no batch spans two chunks, so
    shard mode holds one shard at a time. Stream mode uses the same order, so both sources
    train on the same sequence of batches."""
    starts = np.cumsum([0, *chunk_sizes])
    chunk_order = np.arange(len(chunk_sizes))
    if rng is not None:
        chunk_order = rng.permutation(chunk_order)
    for c in chunk_order:
        rows = np.arange(starts[c], starts[c + 1])
        if select is not None:
            rows = rows[select[starts[c] : starts[c + 1]]]
        if len(rows) == 0:
            continue
        if rng is not None:
            rows = rng.permutation(rows)
        for b in range(0, len(rows), batch_size):
            yield rows[b : b + batch_size]


class ActivationSource(Protocol):
    """Where probes read activations: shards on disk (ProbeData) or the model itself
    (minormech.stream.StreamSource). Both give the same batches for the same order."""

    prompts: list[Prompt]
    targets: torch.Tensor  # [N, d] the weight w of every prompt
    weight_ids: torch.Tensor  # [N]
    layers: list[int]
    chunk_sizes: list[int]

    def width(self, site: str) -> int: ...

    def read(self, order: Iterable[np.ndarray], sites: Sequence[str] | None = None) -> Iterator[ProbeBatch]:
        """Batches of `order` with the activations of `sites` (default: every site held)."""


def shard_prompts(shard: Shard, by_id: dict[int, Prompt]) -> list[Prompt]:
    """The prompts a shard holds activations of, in its order; ValueError naming the shard
    when the prompt file (`by_id`: its prompts by id) does not hold exactly the prompts the
    shard was made from."""
    missing = [int(i) for i in shard.prompt_ids if int(i) not in by_id]
    if missing:
        raise ValueError(
            f"{shard.path}: prompt ids {missing[:5]} are not in the prompt file; "
            "the shard is stale: delete it and rerun"
        )
    prompts = [by_id[int(i)] for i in shard.prompt_ids]
    if prompts_digest(prompts) != shard.header.prompts_sha256:
        raise ValueError(
            f"{shard.path}: made from other prompts than the prompt file holds; the shard is stale: delete it and rerun"
        )
    return prompts


class ProbeData:
    """The activations of one site (all layers) for a prompt set, read from its shards.

    Chunks are read from disk when first needed and kept in memory when `keep_in_memory`
    (the embedded default); otherwise each pass streams the shards one at a time, so
    memory stays at one shard whatever the set's size.
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        prompts: Sequence[Prompt],
        site: str,
        layers: Sequence[int],
        keep_in_memory: bool = True,
    ):
        by_id = {p.id: p for p in prompts}
        self.shards = list(shards)
        self.site, self.layers, self.keep_in_memory = site, list(layers), keep_in_memory
        self._cache: dict[int, PackedActivations] = {}
        self.chunk_prompts: list[list[Prompt]] = []
        for shard in self.shards:
            self.chunk_prompts.append(shard_prompts(shard, by_id))
        self.prompts = [p for chunk in self.chunk_prompts for p in chunk]
        self.targets = torch.tensor([p.weight for p in self.prompts], dtype=torch.float32)
        self.weight_ids = torch.tensor([p.weight_id for p in self.prompts])
        self.chunk_sizes = [len(c) for c in self.chunk_prompts]
        self._chunk_start = np.cumsum([0, *self.chunk_sizes])

    def __len__(self) -> int:
        return len(self.prompts)

    def width(self, site: str) -> int:
        return self.shards[0].width(site, self.layers[0])

    @property
    def max_length(self) -> int:
        return max(p.length for p in self.prompts)

    def _chunk(self, i: int) -> PackedActivations:
        if i in self._cache:
            return self._cache[i]
        chunk = PackedActivations.from_shard(self.shards[i], self.site, self.layers)
        if self.keep_in_memory:
            self._cache[i] = chunk
        return chunk

    def read(self, order: Iterable[np.ndarray], sites: Sequence[str] | None = None) -> Iterator[ProbeBatch]:
        """The batches of `order` (prompt indices, each batch inside one chunk); a shard
        source holds one site, so `sites` changes nothing."""
        for rows in order:
            c = int(np.searchsorted(self._chunk_start, rows[0], side="right")) - 1
            local = rows - self._chunk_start[c]
            if local.min() < 0 or local.max() >= self.chunk_sizes[c]:
                raise ValueError(
                    f"a batch spans two shards ({self.shards[c].path} and another); batch_order never makes one"
                )
            index = torch.as_tensor(rows)
            yield ProbeBatch(self._chunk(c), local, self.targets[index], self.weight_ids[index], index)


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
    seeds: int = 1  # probes per (variant, layer), initialised from seed, seed + 1, ...

    @classmethod
    def from_config(cls, probe_config: dict) -> ProbeTraining:
        regime = probe_config["regime"]
        settings = dict(probe_config[regime])
        return cls(
            regime=regime,
            d_proj=probe_config["d_proj"],
            seed=probe_config["seed"],
            seeds=probe_config["seeds"],
            **settings,
        )


def validation_mask(weight_ids: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Hold out whole training weights (not prompts), as the test set holds out weights."""
    unique = np.unique(np.asarray(weight_ids))
    rng = np.random.default_rng([seed, 7919])
    n_val = max(1, int(round(fraction * len(unique))))
    held_out = rng.choice(unique, size=n_val, replace=False)
    return np.isin(np.asarray(weight_ids), held_out)


@dataclass
class ProbeGroup:
    """Probes trained as one stack: every layer of one site, times the variants (feature
    masks [V, L, d]; None = one unfiltered variant), times `settings.seeds` probe seeds. A
    shard-mode probe job trains one or two groups; a stream job trains all groups of its
    (model, task) from the same forwards. `variant_ids` name the masks' variants for
    seeding (default 0..V-1); `control_targets` [n_weights, d], when given, replace each
    prompt's target w by the row of its weight id (the control task); `name` is what logs
    call the group (default: the site). `follows`, the index of another group of the same
    call (of as many probes), makes early stopping (improved regime) follow that group's:
    this group trains exactly the epochs that one does, and each of its probes keeps its
    state at the epoch its counterpart there (same variant, seed and layer) validated best.
    A control-task probe follows its task probe, because its targets cannot be validated
    on the validation split's weights, which it never saw (validated there, it would stop
    before it learned anything and make the task probe look selective)."""

    site: str
    feature_masks: torch.Tensor | None = None
    variant_ids: Sequence[int] | None = None
    name: str = ""
    control_targets: torch.Tensor | None = None
    follows: int | None = None


class ProbeStack:
    """One group's probes, optimizer and early-stopping state. Each stack has its own Adam,
    so groups trained side by side (stream mode) follow exactly the steps they would
    follow alone (shard mode).

    Probe seeds are extra variants, seed-minor: variant v, seed k is row v * seeds + k of
    the stack, initialised from settings.seed + k. They see the same batches, so the
    spread between them is that of the probes' initial values."""

    def __init__(
        self,
        group: ProbeGroup,
        width: int,
        layers: Sequence[int],
        settings: ProbeTraining,
        max_positions: int,
        device: torch.device,
    ):
        n_masks = 1 if group.feature_masks is None else group.feature_masks.shape[0]
        variant_ids = list(range(n_masks)) if group.variant_ids is None else list(group.variant_ids)
        self.site, self.name, self.seeds = group.site, group.name or group.site, settings.seeds
        self.probes = StackedProbes(
            n_masks * settings.seeds,
            len(layers),
            width,
            settings.d_proj,
            2,
            max_positions,
            settings.seed,
            layer_ids=layers,
            variant_ids=[v for v in variant_ids for _ in range(settings.seeds)],
            init_seeds=[settings.seed + k for _ in variant_ids for k in range(settings.seeds)],
        ).to(device)
        self.masks = (
            None
            if group.feature_masks is None
            else group.feature_masks.repeat_interleave(settings.seeds, dim=0).to(device)
        )
        self.control_targets = None if group.control_targets is None else group.control_targets.float().to(device)
        self.follows = group.follows
        self.optimizer = torch.optim.Adam(
            self.probes.parameters(), lr=settings.lr, fused=True
        )  # one kernel for all parameters: ~30% faster steps here
        self.active = True

    def __call__(self, batch: ProbeBatch) -> torch.Tensor:
        return self.probes(batch.activations(self.site), batch.lengths, self.masks)

    def targets(self, weights: torch.Tensor, weight_ids: torch.Tensor) -> torch.Tensor:
        """What this stack's probes learn for prompts with these weights and weight ids."""
        if self.control_targets is None:
            return weights
        return self.control_targets[weight_ids.to(self.control_targets.device)].to(weights.device)

    def step(self, batch: ProbeBatch) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        losses = per_probe_mse(self(batch), self.targets(batch.targets, batch.weight_ids))
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach()


def _sites_of(stacks: Sequence[ProbeStack]) -> list[str]:
    return list(dict.fromkeys(stack.site for stack in stacks))


def order_rng(seed: int) -> np.random.Generator:
    """The generator of the training batch order (batch_order) for probe seed `seed`."""
    return np.random.default_rng([seed, 104729])


@torch.no_grad()
def predict_stacks(
    stacks: Sequence[ProbeStack], source: ActivationSource, batch_size: int, select: np.ndarray | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(predictions [V, L, N, 2] per stack on the CPU, prompt indices [N]) for the selected
    prompts in source order, every stack from the same batches."""
    device = stacks[0].probes.w_proj.device
    outputs: list[list[torch.Tensor]] = [[] for _ in stacks]
    indices = []
    for batch in source.read(batch_order(source.chunk_sizes, batch_size, select), sites=_sites_of(stacks)):
        batch = batch.to(device)
        for out, stack in zip(outputs, stacks):
            out.append(stack(batch).cpu())
        indices.append(batch.prompt_index)
    return [torch.cat(out, dim=2) for out in outputs], torch.cat(indices)


def train_probe_groups(
    train: ActivationSource,
    groups: Sequence[ProbeGroup],
    settings: ProbeTraining,
    max_positions: int,
    device: torch.device = torch.device("cpu"),
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
    eval_batch_size: int = 256,
) -> tuple[list[ProbeStack], list[dict]]:
    """Train every group on `train`, all from the same batches (one read of the source per
    step); returns the trained stacks and a summary per group. `eval_batch_size` is the
    batch of validation passes (stream mode: a forward batch)."""
    stacks = [
        ProbeStack(group, train.width(group.site), train.layers, settings, max_positions, device) for group in groups
    ]
    rng = order_rng(settings.seed)
    if settings.regime == "paper":
        return stacks, _train_fixed_steps(train, stacks, settings, rng, device, progress)
    if settings.regime == "improved":
        return stacks, _train_early_stopping(train, stacks, settings, rng, device, progress, eval_batch_size)
    raise ValueError(f"probe.regime: unknown regime {settings.regime!r}; choose paper or improved")


def _train_fixed_steps(
    train: ActivationSource, stacks: Sequence[ProbeStack], settings: ProbeTraining, rng, device, progress
) -> list[dict]:
    """The paper's regime: `steps` optimizer steps of `batch_size` prompts, cycling through
    the training prompts in a fresh random order each pass."""

    def endless() -> Iterator[np.ndarray]:
        while True:
            yield from batch_order(train.chunk_sizes, settings.batch_size, rng=rng)

    last = [None] * len(stacks)
    for batch in progress(
        train.read(itertools.islice(endless(), settings.steps), sites=_sites_of(stacks)), settings.steps
    ):
        batch = batch.to(device)
        last = [stack.step(batch) for stack in stacks]
    passes = settings.steps * settings.batch_size / len(train.prompts)
    return [
        {"regime": "paper", "steps": settings.steps, "passes_over_data": passes, "final_train_loss": loss.mean().item()}
        for loss in last
    ]


@dataclass
class _BestSoFar:
    """Early-stopping state of one stack: each probe's best validation MSE, its parameters
    and epoch then, and the stack's epochs and steps so far."""

    state: dict[str, torch.Tensor]
    epoch: torch.Tensor
    mse: torch.Tensor | None = None
    epochs_without_gain: int = 0
    epochs: int = 0
    steps: int = 0

    @classmethod
    def of(cls, stack: ProbeStack) -> _BestSoFar:
        state = {name: p.detach().clone() for name, p in stack.probes.named_parameters()}
        return cls(state, torch.zeros(stack.probes.w_proj.shape[:2], dtype=torch.long))

    def update(self, stack: ProbeStack, val_mse: torch.Tensor, epoch: int) -> torch.Tensor:
        """Keep the parameters of every probe whose validation MSE improved; returns which."""
        improved = val_mse < self.mse if self.mse is not None else torch.ones_like(val_mse, dtype=torch.bool)
        if improved.any():
            self.mse = val_mse if self.mse is None else torch.where(improved, val_mse, self.mse)
        self.keep(stack, improved, epoch)
        return improved

    def keep(self, stack: ProbeStack, improved: torch.Tensor, epoch: int) -> None:
        """Keep the parameters of the probes marked `improved` (by their own validation, or
        by the stack this one follows)."""
        self.epochs = epoch + 1
        if improved.any():
            self.epoch[improved] = epoch
            for name, param in stack.probes.named_parameters():
                mask = improved.to(param.device)
                self.state[name][mask] = param.detach()[mask]
            self.epochs_without_gain = 0
        else:
            self.epochs_without_gain += 1

    def restore(self, stack: ProbeStack) -> None:
        with torch.no_grad():
            for name, param in stack.probes.named_parameters():
                param.copy_(self.state[name])

    def followed(self, leader: str) -> dict:
        """The summary of a stack that kept each probe's state at `leader`'s best epoch."""
        return {
            "regime": "improved",
            "epochs": self.epochs,
            "steps": self.steps,
            "early_stopping": f"at the best epochs of {leader}",
            "best_epoch": self.epoch.tolist(),
        }

    def summary(self, n_validation: int) -> dict:
        return {
            "regime": "improved",
            "epochs": self.epochs,
            "steps": self.steps,
            "n_validation_prompts": n_validation,
            "best_epoch": self.epoch.tolist(),
            "best_validation_mse": self.mse.tolist(),
        }


def _followers(stacks: Sequence[ProbeStack]) -> dict[int, list[int]]:
    """Stack index -> the stacks that follow its early stopping (same number of probes)."""
    followers: dict[int, list[int]] = {}
    for i, stack in enumerate(stacks):
        if stack.follows is not None:
            leader = stacks[stack.follows]
            if leader.follows is not None or leader.probes.w_proj.shape[:2] != stack.probes.w_proj.shape[:2]:
                raise ValueError(f"{stack.name} cannot follow {leader.name}: it must be a validated stack of its shape")
            followers.setdefault(stack.follows, []).append(i)
    return followers


def _train_early_stopping(
    train: ActivationSource,
    stacks: Sequence[ProbeStack],
    settings: ProbeTraining,
    rng,
    device,
    progress,
    eval_batch_size: int,
) -> list[dict]:
    """Batches over the training weights minus a validation split; after each epoch every
    probe whose validation MSE improved keeps its parameters; a stack stops when none of its
    probes improved for `patience` epochs (the others go on). Each probe ends at its own
    best epoch."""
    is_val = validation_mask([p.weight_id for p in train.prompts], settings.val_fraction, settings.seed)
    best = [_BestSoFar.of(stack) for stack in stacks]
    followers = _followers(stacks)
    for epoch in progress(range(settings.max_epochs), settings.max_epochs):
        active = [i for i, s in enumerate(stacks) if s.active]
        if not active:
            break
        sites = _sites_of(
            [stacks[i] for i in active]
        )  # a stream source stops recording the sites whose stacks all stopped
        for batch in train.read(
            batch_order(train.chunk_sizes, settings.batch_size, select=~is_val, rng=rng), sites=sites
        ):
            batch = batch.to(device)
            for i in active:
                stacks[i].step(batch)
                best[i].steps += 1
        validated = [i for i in active if stacks[i].follows is None]
        predictions, index = predict_stacks([stacks[i] for i in validated], train, eval_batch_size, select=is_val)
        for i, prediction in zip(validated, predictions):
            val_mse = per_probe_mse(prediction, stacks[i].targets(train.targets[index], train.weight_ids[index]))
            improved = best[i].update(stacks[i], val_mse, epoch)
            for f in followers.get(i, ()):
                best[f].keep(stacks[f], improved, epoch)
            log.info(
                "epoch %d, %s: mean validation MSE %.3f (best %.3f)",
                epoch,
                stacks[i].name,
                val_mse.mean(),
                best[i].mse.mean(),
            )
            if best[i].epochs_without_gain >= settings.patience:
                stacks[i].active = False
        for leader, group in followers.items():
            for f in group:
                stacks[f].active = stacks[leader].active
    for stack, state in zip(stacks, best):
        state.restore(stack)
    return [
        state.summary(int(is_val.sum())) if stack.follows is None else state.followed(stacks[stack.follows].name)
        for stack, state in zip(stacks, best)
    ]
