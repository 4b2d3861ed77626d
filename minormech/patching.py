"""Activation patching counts (paper §4.3, §5.6, eq. 38-40; SPEC "Activation patching").

Setting rho(tau1, u, v): pair i has the reference prompt R_i = D*_tau1[i] and
r_NP = prediction(R_i). v = B: base R_i, source D_u[i]; v = S: base D_u[i], source R_i.
r_P = prediction(base with the kept features of one (site, layer) replaced by the
source's at aligned positions); rho = #{i : r_P == r_NP}. The kept features are the
filter of eq. 35 with h = 0.5 and op '<=' for tau1 = LR (the MD half), '>=' for MD.

A prediction is the greedy decode of as many tokens as the true answer has (with
one-token answers, the paper's argmax).

Cost: every prompt runs unpatched once, recording what the patched runs need: its
residual stream entering each patched layer, its KV cache, its site activations (as a
source) and its own prediction. A patched run at layer i then starts at layer i from
the cached residual (layers below i cannot change: the patch is at layer i), reuses the
base's KV cache for layers below i, and decodes the remaining answer tokens with the
cache: about (L - i) / L of a forward pass instead of m full passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Callable, Iterable, Sequence

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from minormech.activations import right_padded_batch
from minormech.hooks import site_hooks
from minormech.prompts import Prompt

BASIC, SWAPPED = "B", "S"


@dataclass(frozen=True)
class Setting:
    tau1: str
    u: str
    v: str

    @property
    def name(self) -> str:
        return f"rho({self.tau1},{self.u},{self.v})"


def settings_for(pair: Sequence[str]) -> list[Setting]:
    """The eight settings of the paper for a task pair (tau1, u in the pair, v in B/S)."""
    return [Setting(t, u, v) for t, u, v in product(pair, pair, (BASIC, SWAPPED))]


def filter_op(tau1: str, pair: Sequence[str]) -> str:
    """'<=' when tau1 is the pair's first task (LR), '>=' when it is the second (MD)."""
    return "<=" if tau1 == pair[0] else ">="


@dataclass
class PromptRun:
    """What one unpatched pass over a batch of prompts leaves for patched runs."""

    prompts: list[Prompt]
    input_ids: torch.Tensor  # [B, S] right-padded
    attention_mask: torch.Tensor  # [B, S]
    lengths: torch.Tensor  # [B]
    residuals: dict[int, torch.Tensor]  # layer -> [B, S, hidden] entering that layer
    cache: DynamicCache  # every layer's keys and values of the prompt
    sites: dict[tuple[str, int], torch.Tensor]  # (site, layer) -> [B, S, width]
    prediction: torch.Tensor  # [B, M] greedy tokens (M = longest answer)

    @property
    def answer_lengths(self) -> torch.Tensor:
        return torch.tensor([len(p.answer_ids) for p in self.prompts])


def aligned_source_index(base_lengths: torch.Tensor, source_lengths: torch.Tensor, width: int, alignment: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For each base position: the source position patched into it, and whether it is patched.

    'end' aligns the last prompt token with the last; 'left' the first with the first; in
    both, over the shorter prompt's length."""
    positions = torch.arange(width)[None, :]
    overlap = torch.minimum(base_lengths, source_lengths)[:, None]
    if alignment == "end":
        index = positions - base_lengths[:, None] + source_lengths[:, None]
        valid = (positions < base_lengths[:, None]) & (positions >= base_lengths[:, None] - overlap)
    elif alignment == "left":
        index = positions.expand(len(base_lengths), -1)
        valid = positions < overlap
    else:
        raise ValueError(f"patching.alignment: unknown alignment {alignment!r}; choose end or left")
    return index.clamp(min=0), valid


def run_layers(model, hidden: torch.Tensor, start: int, attention_mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Decoder layers start..L-1 on the residual `hidden` entering layer `start`, for a
    prompt pass (positions 0..S-1, no earlier tokens); writes their keys and values to
    `cache` and returns the final-normed hidden states. Mirrors LlamaModel.forward."""
    base = model.model
    position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
    mask = create_causal_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask, past_key_values=None, position_ids=position_ids)
    position_embeddings = base.rotary_emb(hidden, position_ids=position_ids)
    for layer in base.layers[start:]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids, past_key_values=cache, use_cache=True)
    return base.norm(hidden)


def cache_below(model, source: DynamicCache, layer: int) -> DynamicCache:
    """A fresh cache holding `source`'s keys and values for layers below `layer` (shared
    tensors: DynamicCache appends by concatenation, so the source is never modified)."""
    cache = DynamicCache(config=model.config)
    for j in range(layer):
        cache.layers[j].lazy_initialization(source.layers[j].keys, source.layers[j].values)
        cache.layers[j].keys, cache.layers[j].values = source.layers[j].keys, source.layers[j].values
    return cache


def greedy_continue(model, first_logits: torch.Tensor, cache: DynamicCache, attention_mask: torch.Tensor, lengths: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """[B, n_tokens] greedy tokens: the first from `first_logits` [B, vocab], the rest
    decoded with the prompt's cache. Right padding stays masked; each row's new tokens
    get position ids that continue its own prompt."""
    token = first_logits.argmax(-1)
    tokens = [token]
    mask = attention_mask
    for step in range(1, n_tokens):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position_ids = (lengths + step - 1)[:, None].to(mask.device)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def last_logits(model, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, vocab] float32 logits at each row's last prompt position."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return model.lm_head(hidden[rows, lengths.to(hidden.device) - 1]).float()


@torch.inference_mode()
def unpatched_run(model, prompts: Sequence[Prompt], sites: Sequence[str], layers: Sequence[int], pad_id: int) -> PromptRun:
    """One unpatched pass: residuals entering `layers`, KV cache, site activations and
    the greedy prediction."""
    device = next(model.parameters()).device
    ids, mask = right_padded_batch(prompts, pad_id, device)
    lengths = mask.sum(1).cpu()
    residuals: dict[int, torch.Tensor] = {}
    handles = [
        model.model.layers[layer].register_forward_pre_hook(lambda _m, args, layer=layer: residuals.__setitem__(layer, args[0]))
        for layer in layers
    ]
    recorded: dict[tuple[str, int], torch.Tensor] = {}
    try:
        with site_hooks(model, sites, layers, lambda s, l, out: recorded.__setitem__((s, l), out)):
            cache = DynamicCache(config=model.config)
            hidden = model.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    n_tokens = max(len(p.answer_ids) for p in prompts)
    first = last_logits(model, hidden, lengths)
    # Decoding extends the cache; patched runs need the prompt-only cache, so decode on a copy.
    prediction = greedy_continue(model, first, cache_below(model, cache, len(model.model.layers)), mask, lengths, n_tokens)
    return PromptRun(list(prompts), ids, mask, lengths, residuals, cache, recorded, prediction.cpu())


def patch_hook(base: PromptRun, source: PromptRun, site: str, layer: int, keep: torch.Tensor, alignment: str):
    """A site hook that replaces the `keep` features [width] of the base's (site, layer)
    output with the source's at aligned prompt positions. It patches the prompt pass only
    (tensors as wide as the base batch); decode steps of one token pass through."""
    device = base.input_ids.device
    index, valid = aligned_source_index(base.lengths, source.lengths, base.input_ids.shape[1], alignment)
    source_values = source.sites[(site, layer)]
    index = index.clamp(max=source_values.shape[1] - 1).to(device)
    gathered = source_values.gather(1, index[..., None].expand(-1, -1, source_values.shape[-1]))
    replace_mask = valid.to(device)[..., None] & keep.to(device)[None, None, :]

    def patch(_site, _layer, output):
        if output.shape[1] != replace_mask.shape[1]:
            return None
        return torch.where(replace_mask, gathered.to(output.dtype), output)

    return patch


@torch.inference_mode()
def patched_first_logits(model, base: PromptRun, source: PromptRun, site: str, layer: int, keep: torch.Tensor, alignment: str = "end") -> tuple[torch.Tensor, DynamicCache]:
    """Logits [B, vocab] after the base prompt with (site, layer) patched, computed from the
    residual entering `layer` (nothing below it is rerun), and the cache to decode on."""
    cache = cache_below(model, base.cache, layer)
    with site_hooks(model, [site], [layer], patch_hook(base, source, site, layer, keep, alignment)):
        hidden = run_layers(model, base.residuals[layer], layer, base.attention_mask, cache)
    return last_logits(model, hidden, base.lengths), cache


@torch.inference_mode()
def patched_prediction(model, base: PromptRun, source: PromptRun, site: str, layer: int, keep: torch.Tensor, n_tokens: int, alignment: str = "end") -> torch.Tensor:
    """[B, n_tokens] greedy prediction of the base prompts with (site, layer) patched."""
    first, cache = patched_first_logits(model, base, source, site, layer, keep, alignment)
    return greedy_continue(model, first, cache, base.attention_mask, base.lengths, n_tokens).cpu()


def same_prediction(a: torch.Tensor, b: torch.Tensor, answer_lengths: torch.Tensor) -> torch.Tensor:
    """[B] bool: equal over each row's first answer_length tokens."""
    positions = torch.arange(a.shape[1])[None, :]
    relevant = positions < answer_lengths[:, None]
    return ((a == b) | ~relevant).all(1)


def correct(run: PromptRun) -> torch.Tensor:
    """[B] bool: the unpatched prediction is the true answer."""
    truth = torch.zeros_like(run.prediction)
    for row, prompt in enumerate(run.prompts):
        truth[row, : len(prompt.answer_ids)] = torch.tensor(prompt.answer_ids)
    return same_prediction(run.prediction, truth, run.answer_lengths)


def patching_counts(
    model,
    reference: dict[str, Sequence[Prompt]],
    others: dict[str, Sequence[Prompt]],
    pair: Sequence[str],
    sites: Sequence[str],
    layers: Sequence[int],
    keep_masks: dict[tuple[str, str, int], torch.Tensor],
    batch_size: int,
    pad_id: int,
    alignment: str = "end",
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
) -> tuple[list[dict], dict[str, int], int]:
    """rho for every setting, site and layer, plus unpatched accuracy per prompt set.

    reference[task] = D*_task, others[task] = D_task (same length); keep_masks[(tau1,
    site, layer)] = the kept features. Returns (rows of counts, correct counts per set,
    number of forward passes run)."""
    n_pairs = len(reference[pair[0]])
    settings = settings_for(pair)
    counts = {(s.name, site, layer): 0 for s in settings for site in sites for layer in layers}
    accuracy = {f"{kind}:{task}": 0 for kind in ("reference", "patching") for task in pair}
    passes = 0
    starts = list(range(0, n_pairs, batch_size))
    for start in progress(starts, len(starts)):
        chunk = slice(start, start + batch_size)
        refs = {t: unpatched_run(model, reference[t][chunk], sites, layers, pad_id) for t in pair}
        srcs = {t: unpatched_run(model, others[t][chunk], sites, layers, pad_id) for t in pair}
        passes += 2 * len(pair)
        for t in pair:
            accuracy[f"reference:{t}"] += int(correct(refs[t]).sum())
            accuracy[f"patching:{t}"] += int(correct(srcs[t]).sum())
        for setting in settings:
            reference_run = refs[setting.tau1]
            base, source = (reference_run, srcs[setting.u]) if setting.v == BASIC else (srcs[setting.u], reference_run)
            for site in sites:
                for layer in layers:
                    keep = keep_masks[(setting.tau1, site, layer)]
                    # Decode as many tokens as r_NP has, so the two predictions are comparable.
                    patched = patched_prediction(model, base, source, site, layer, keep, reference_run.prediction.shape[1], alignment)
                    passes += 1
                    same = same_prediction(patched, reference_run.prediction, reference_run.answer_lengths)
                    counts[(setting.name, site, layer)] += int(same.sum())
    rows = [
        {"setting": name, "tau1": s.tau1, "u": s.u, "v": s.v, "site": site, "layer": layer, "rho": counts[(name, site, layer)], "n_pairs": n_pairs, "fraction": counts[(name, site, layer)] / n_pairs}
        for s in settings
        for name in [s.name]
        for site in sites
        for layer in layers
    ]
    return rows, accuracy, passes
