"""Distributed alignment search at one (site, layer), last prompt token (paper App. B;
Geiger et al. 2023, boundless DAS of Wu et al. 2024): is the weight w represented in a
subspace of the site that the model uses?

A counterfactual pair is a base prompt with weight w and a source prompt with weight w'.
The interchange intervention rotates the site's features h by an orthogonal R, replaces
the coordinates a mask m selects with the source's, and rotates back:

    h' = R^T (m * R h_source + (1 - m) * R h_base)

at the base's last prompt token (the source's last token gives h_source). If the
selected subspace carries w, the intervened base should answer f(x_query_base, w'), the
counterfactual answer. With R = I and m = 1 this is the full activation patch of that
position (minormech.patching, alignment 'last'), with m = 0 it changes nothing: the
same arithmetic, exactly.

Training (model frozen) maximises the teacher-forced log-likelihood of the counterfactual
answer (eq. 1) over R and, in boundless DAS, a boundary b in (0, 1] whose soft mask
m_i = sigmoid((b W - i) / T) selects the first b W rotated coordinates, with the
temperature T annealed linearly and b penalised by `boundary_weight` * b. Plain DAS fixes
m to the first `size` coordinates. Every step runs the model only from the layer's cached
input (minormech.runner.run_layers): the layers below cannot change.

Evaluation: interchange intervention accuracy (IIA), the share of held-out pairs whose
greedy decode of the counterfactual answer's length under the intervention is that answer
(as figure 5 scores predictions), on pairs whose counterfactual answer differs from the
base's own answer only, and the mean log-probability of the counterfactual answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from minormech.hooks import site_hooks
from minormech.prompts import Prompt
from minormech.runner import (
    PromptRun,
    answer_log_prob,
    batched,
    rerun_from,
    right_padded,
    run_layers,
    score_answer,
    token_log_probs,
    unpatched_run,
)
from minormech.tasks import Task, stable_seed


@dataclass(frozen=True)
class CounterfactualPair:
    """A base prompt, a source prompt of another weight, and the counterfactual answer
    f(x_query_base, w_source) in the base prompt's tokenization."""

    base: Prompt
    source: Prompt
    answer: str
    answer_ids: tuple[int, ...]


def counterfactual_answer_ids(base: Prompt, answer: str, tokenizer) -> list[int]:
    """The tokens of `answer` after the base prompt's text, as build_prompt separates a
    prompt's own answer: the full text's tokens past the prompt's."""
    full = list(tokenizer(base.text + answer)["input_ids"])
    if full[: base.length] != base.input_ids or len(full) == base.length:
        raise ValueError(f"prompt {base.id}: the tokenizer merges the answer {answer!r} with the end of the prompt")
    return full[base.length :]


def counterfactual_pairs(
    prompts: Sequence[Prompt], task: Task, tokenizer, n_pairs: int, seed: int
) -> list[CounterfactualPair]:
    """Up to `n_pairs` seeded pairs of `prompts` (one prompt set, so one weight split): each
    base meets a source of another weight, and a pair is kept only where the counterfactual
    answer differs from the base's own (elsewhere an unchanged answer would count as a
    success). Bases are taken in a seeded order, each at most once."""
    rng = np.random.default_rng(stable_seed(seed, "das_pairs", task.name))
    pairs: list[CounterfactualPair] = []
    for i in rng.permutation(len(prompts)):
        base = prompts[int(i)]
        candidates = [p for p in prompts if p.weight != base.weight]
        if not candidates or not base.example_x:
            continue
        source = candidates[int(rng.integers(len(candidates)))]
        answer = str(int(task.output(np.array(base.example_x[-1]), np.array(source.weight))))
        if answer == base.answer:
            continue
        pairs.append(
            CounterfactualPair(base, source, answer, tuple(counterfactual_answer_ids(base, answer, tokenizer)))
        )
        if len(pairs) == n_pairs:
            break
    return pairs


def interchange(base: torch.Tensor, source: torch.Tensor, rotation: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """R^T (m * R s + (1 - m) * R b) for row vectors b, s [..., W], R [W, W], m [W]."""
    mixed = mask * (source @ rotation.T) + (1 - mask) * (base @ rotation.T)
    return mixed @ rotation


def intervention_hook(
    positions: torch.Tensor, source_values: torch.Tensor, rotation: torch.Tensor, mask: torch.Tensor, width: int
):
    """A site hook that applies `interchange` at each row's `positions` [B] of a prompt
    pass `width` tokens long, with the source's features `source_values` [B, W]; other
    positions, and decode steps of one token, pass through untouched."""

    def hook(_site, _layer, output):
        if output.shape[1] != width:
            return None
        rows = torch.arange(output.shape[0], device=output.device)
        at = positions.to(output.device)
        changed = interchange(output[rows, at], source_values.to(output.dtype), rotation.to(output.dtype), mask)
        return output.index_put((rows, at), changed.to(output.dtype))

    return hook


def boundary_mask(boundary: torch.Tensor, width: int, temperature: float) -> torch.Tensor:
    """The soft mask of boundless DAS: sigmoid((b W - i) / T) for coordinates i = 0..W-1."""
    index = torch.arange(width, dtype=boundary.dtype, device=boundary.device)
    return torch.sigmoid((boundary.clamp(1e-3, 1.0) * width - index) / temperature)


def hard_mask(size: int, width: int) -> torch.Tensor:
    """The first `size` rotated coordinates."""
    return (torch.arange(width) < size).float()


class Rotation(nn.Module):
    """An orthogonal W x W rotation (torch's orthogonal parametrization), started at a seeded
    random orthogonal matrix, and the boundary of boundless DAS."""

    def __init__(self, width: int, seed: int, boundary: float = 0.5):
        super().__init__()
        linear = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            linear.weight.copy_(random_rotation(width, seed))
        self.linear = nn.utils.parametrizations.orthogonal(linear)
        self.boundary = nn.Parameter(torch.tensor(boundary))
        self.width = width

    @property
    def matrix(self) -> torch.Tensor:
        return self.linear.weight

    def learned_size(self) -> int:
        """The number of coordinates the boundary selects at temperature 0."""
        return int(round(float(self.boundary.detach().clamp(1e-3, 1.0)) * self.width))


@dataclass(frozen=True)
class DasSettings:
    """How a rotation is trained: `size` None for boundless DAS (a learned boundary), else
    plain DAS with that many coordinates; Adam with `lr` for the rotation and
    `boundary_lr` for the boundary; `epochs` over the training pairs in batches of
    `batch_size`; the temperature from `temperature_start` to `temperature_end`; the
    boundary's penalty `boundary_weight`; the seed of the rotation's start."""

    size: int | None = None
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1e-3
    boundary_lr: float = 1e-2
    temperature_start: float = 50.0
    temperature_end: float = 0.1
    boundary_weight: float = 1.0
    seed: int = 0


@dataclass
class CachedBatch:
    """What a training step needs from the frozen model for a batch of pairs: the base
    prompt + counterfactual answer[:-1] (right-padded) with the residual entering the layer,
    the source's site features at its last prompt token, and where each answer token is
    predicted."""

    residual: torch.Tensor  # [B, S, hidden]
    attention_mask: torch.Tensor  # [B, S]
    last: torch.Tensor  # [B] the base's last prompt position
    source_values: torch.Tensor  # [B, W]
    answer_positions: torch.Tensor  # [B, M]
    answer_ids: torch.Tensor  # [B, M]
    answer_mask: torch.Tensor  # [B, M] bool


@torch.no_grad()
def source_last_features(model, sources: Sequence[Prompt], site: str, layer: int, pad_id: int) -> torch.Tensor:
    """[B, W] the (site, layer) features of each source prompt at its last token: one
    forward pass, no cache, no decoding (a source is only read, never scored)."""
    device = next(model.parameters()).device
    ids, mask = right_padded([p.input_ids for p in sources], pad_id, device)
    recorded: dict[str, torch.Tensor] = {}
    with site_hooks(model, [site], [layer], lambda _s, _l, out: recorded.__setitem__("site", out.detach().clone())):
        model.model(input_ids=ids, attention_mask=mask, use_cache=False)
    rows = torch.arange(len(sources), device=device)
    return recorded["site"][rows, mask.sum(1) - 1]


@torch.no_grad()
def cache_batch(model, pairs: Sequence[CounterfactualPair], site: str, layer: int, pad_id: int) -> CachedBatch:
    """Run the frozen model once over a batch of pairs (bases teacher-forced on the
    counterfactual answers, sources on their prompts) and keep what every training step
    reuses."""
    device = next(model.parameters()).device
    ids, mask = right_padded([list(p.base.input_ids) + list(p.answer_ids[:-1]) for p in pairs], pad_id, device)
    captured: dict[str, torch.Tensor] = {}
    handle = model.model.layers[layer].register_forward_pre_hook(
        lambda _m, args: captured.__setitem__("residual", args[0].detach().clone())
    )
    try:
        model.model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    source_values = source_last_features(model, [p.source for p in pairs], site, layer, pad_id)
    last = torch.tensor([p.base.length - 1 for p in pairs], device=device)
    positions, answer_mask = right_padded(
        [list(range(p.base.length - 1, p.base.length - 1 + len(p.answer_ids))) for p in pairs], 0, device
    )
    answer_ids, _ = right_padded([list(p.answer_ids) for p in pairs], 0, device)
    return CachedBatch(captured["residual"], mask, last, source_values, positions, answer_ids, answer_mask.bool())


def counterfactual_log_prob(
    model, batch: CachedBatch, site: str, layer: int, rotation: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """[B] log p(counterfactual answer | intervened base), teacher forced (eq. 1),
    differentiable in `rotation` and `mask`; the model runs from layer `layer` only."""
    hook = intervention_hook(batch.last, batch.source_values, rotation, mask, batch.residual.shape[1])
    with site_hooks(model, [site], [layer], hook):
        hidden = run_layers(model, batch.residual, layer, batch.attention_mask, DynamicCache(config=model.config))
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    logits = model.lm_head(hidden[rows, batch.answer_positions]).float()
    return answer_log_prob(token_log_probs(logits, batch.answer_ids), batch.answer_mask)


@dataclass
class TrainingLog:
    """Per step: the loss (mean negative log-likelihood plus the boundary penalty) and the
    boundary."""

    loss: list[float]
    boundary: list[float]


def train_rotation(
    model, batches: Sequence[CachedBatch], site: str, layer: int, width: int, settings: DasSettings
) -> tuple[Rotation, TrainingLog]:
    """A rotation (and for boundless DAS its boundary) trained on cached batches of pairs,
    the model frozen."""
    device = next(model.parameters()).device
    rotation = Rotation(width, settings.seed).to(device)
    groups = [{"params": rotation.linear.parameters(), "lr": settings.lr}]
    if settings.size is None:
        groups.append({"params": [rotation.boundary], "lr": settings.boundary_lr})
    optimizer = torch.optim.Adam(groups)
    n_steps = settings.epochs * len(batches)
    temperatures = np.linspace(settings.temperature_start, settings.temperature_end, max(n_steps, 1))
    log = TrainingLog([], [])
    step = 0
    for _epoch in range(settings.epochs):
        for batch in batches:
            if settings.size is None:
                mask = boundary_mask(rotation.boundary, width, float(temperatures[step]))
                penalty = settings.boundary_weight * rotation.boundary.clamp(1e-3, 1.0)
            else:
                mask, penalty = hard_mask(settings.size, width).to(device), torch.zeros((), device=device)
            loss = -counterfactual_log_prob(model, batch, site, layer, rotation.matrix, mask).mean() + penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            log.loss.append(float(loss.detach()))
            log.boundary.append(float(rotation.boundary.detach()))
            step += 1
    return rotation, log


@dataclass
class PairScores:
    """Per evaluated pair: whether the intervened greedy decode is the counterfactual
    answer, and its log-probability."""

    exact: np.ndarray  # [n] bool
    logp: np.ndarray  # [n]


@torch.inference_mode()
def evaluate(
    model,
    pairs: Sequence[CounterfactualPair],
    site: str,
    layer: int,
    rotation: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    pad_id: int,
) -> PairScores:
    """Score every pair's counterfactual answer on the intervened base: the base's prompt
    pass is rerun from the layer's cached input with the intervention, and the answer is
    teacher-forced on its cache (minormech.runner.score_answer)."""
    exact, logp = [], []
    for chunk in batched(list(pairs), batch_size):
        base = unpatched_run(model, [p.base for p in chunk], [], [layer], pad_id)  # its residual and cache
        source_values = source_last_features(model, [p.source for p in chunk], site, layer, pad_id)
        answers, _ = right_padded([list(p.answer_ids) for p in chunk], chunk[0].answer_ids[0])
        lengths = torch.tensor([len(p.answer_ids) for p in chunk])
        first, cache = intervened_first_logits(model, base, site, layer, source_values, rotation, mask)
        score = score_answer(model, base, first, cache, answers, lengths)
        exact.append(score.same.numpy())
        logp.append(score.logp.numpy())
    return PairScores(np.concatenate(exact), np.concatenate(logp))


def intervened_first_logits(
    model, base: PromptRun, site: str, layer: int, source_values: torch.Tensor, rotation: torch.Tensor, mask
) -> tuple[torch.Tensor, DynamicCache]:
    """The base's prompt pass rerun from the residual entering `layer` with the
    interchange intervention at its last prompt token: logits [B, vocab] there and the
    cache to decode on (as minormech.patching.patched_first_logits for a patch)."""
    hook = intervention_hook(base.lengths - 1, source_values, rotation, mask, base.input_ids.shape[1])
    with site_hooks(model, [site], [layer], hook):
        return rerun_from(model, base, layer)


def random_rotation(width: int, seed: int) -> torch.Tensor:
    """A seeded random orthogonal matrix (QR of a Gaussian one): the control that asks
    whether any subspace of the learned size would do as well."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(width, width, generator=generator))
    return q * torch.sign(torch.diagonal(r))[None, :]
