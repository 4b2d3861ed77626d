"""Activation patching counts (paper §4.3, §5.6, eq. 38-40; SPEC "Activation patching").

Setting rho(tau1, u, v): pair i has the reference prompt R_i = D*_tau1[i] and
r_NP = prediction(R_i). v = B: base R_i, source D_u[i]; v = S: base D_u[i], source R_i.
r_P = prediction(base with the kept features of one (site, layer) replaced by the
source's at aligned positions); rho = #{i : r_P == r_NP}. The kept features are the
filter of eq. 35 with h = 0.5 and op '<=' for tau1 = LR (the MD half), '>=' for MD.

A prediction is the greedy decode of as many tokens as the true answer has (with
one-token answers, the paper's argmax). r_P == r_NP is read off a teacher-forced decode of
r_NP on the patched base: greedy decoding gives r_NP exactly when each of its tokens is the
argmax after the ones before it, and the same decode gives dlogp.

Cost: every prompt runs unpatched once, recording what the patched runs need: its
residual stream entering each patched layer, its KV cache, its site activations (as a
source) and its own prediction. A patched run at layer i then starts at layer i from
the cached residual (layers below i cannot change: the patch is at layer i), reuses the
base's KV cache for layers below i, and decodes the remaining answer tokens with the
cache: about (L - i) / L of a forward pass instead of m full passes.

Controls (config controls.patching): beside the xi patch, a `random` patch swaps a seeded
random subset of as many features (so a difference is due to which features xi picks, not
how many), and a `noop` patch patches the base with its own activations (so it measures
the machinery itself: it must change nothing). The noop result depends only on the base
set, so it runs once per (base set, site, layer) and serves every setting with that base;
for S settings it is the unpatched agreement of D_u's prediction with r_NP.

Metrics beside rho, per pair, with a = r_NP: dlogp = log p(a | patched base) - log p(a |
base), teacher forced, and dlogit = LD(patched) - LD(base), LD = logit(a_1) minus the
largest other logit at the first answer position. Both move continuously where rho only
counts flips of the greedy answer. Intervals are percentile bootstraps over pairs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import product
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from minormech.activations import right_padded_batch
from minormech.hooks import site_hooks
from minormech.prompts import Prompt
from minormech.tasks import stable_seed
from minormech.uncertainty import Bootstrap

BASIC, SWAPPED = "B", "S"
PATCH_KINDS = ("xi", "random", "noop")


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


def random_keep_mask(keep: torch.Tensor, seed: int, tau1: str, site: str, layer: int) -> torch.Tensor:
    """The random control of the xi mask `keep` of (tau1, site, layer): exactly as many
    features, drawn uniformly from the site's, with a seed of its own per (tau1, site, layer)
    so that reruns and other layers do not change it."""
    rng = np.random.default_rng(stable_seed(seed, "random_patch", tau1, site, layer))
    chosen = rng.choice(keep.numel(), size=int(keep.sum()), replace=False)
    mask = torch.zeros(keep.numel(), dtype=torch.bool)
    mask[torch.from_numpy(chosen)] = True
    return mask


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
    first_logits: torch.Tensor  # [B, vocab] float32 at each last prompt position

    @property
    def answer_lengths(self) -> torch.Tensor:
        return torch.tensor([len(p.answer_ids) for p in self.prompts])

    @property
    def true_answer(self) -> torch.Tensor:
        """[B, M] each prompt's true answer tokens, right-padded with its first token (a real
        token, so that teacher forcing can feed it; scores stop at answer_lengths)."""
        longest = max(len(p.answer_ids) for p in self.prompts)
        return torch.tensor([p.answer_ids + [p.answer_ids[0]] * (longest - len(p.answer_ids)) for p in self.prompts])


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


def next_logits(model, token: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, step: int, cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed answer token `step` - 1 ([B]) through the cache: logits [B, vocab] for answer
    token `step`, and the mask grown by it. Right padding stays masked; each row's new token
    gets the position id that continues its own prompt."""
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    position_ids = (lengths + step - 1)[:, None].to(mask.device)
    out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
    return out.logits[:, -1], mask


def greedy_continue(model, first_logits: torch.Tensor, cache: DynamicCache, attention_mask: torch.Tensor, lengths: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """[B, n_tokens] greedy tokens: the first from `first_logits` [B, vocab], the rest
    decoded with the prompt's cache (which this extends)."""
    token = first_logits.argmax(-1)
    tokens = [token]
    mask = attention_mask
    for step in range(1, n_tokens):
        logits, mask = next_logits(model, token, mask, lengths, step, cache)
        token = logits.argmax(-1)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def teacher_forced(model, first_logits: torch.Tensor, cache: DynamicCache, attention_mask: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of `tokens` [B, n] given the prompt and the tokens before it: [B, n] its log
    probability, and [B, n] whether it is the greedy choice (the argmax greedy_continue
    takes). The first from `first_logits`, the rest by feeding `tokens` through the prompt's
    cache (which this extends). Greedy decoding reproduces a row's tokens exactly when each
    is the greedy choice after the ones before it, so one teacher-forced decode answers both
    "r_P == r_NP?" and "how likely is r_NP?"."""
    tokens = tokens.to(first_logits.device)
    logits, mask = first_logits, attention_mask
    logprobs, greedy = [], []
    for step in range(tokens.shape[1]):
        if step:
            logits, mask = next_logits(model, tokens[:, step - 1], mask, lengths, step, cache)
        logprobs.append(logits.float().log_softmax(-1).gather(1, tokens[:, step, None])[:, 0])
        greedy.append(logits.argmax(-1) == tokens[:, step])
    return torch.stack(logprobs, dim=1), torch.stack(greedy, dim=1)


def logit_difference(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """[B] logit of `token` [B] minus the largest other logit: positive exactly when it is
    the greedy choice, and not squashed like a probability when the model is already sure."""
    token = token.to(logits.device)[:, None]
    others = logits.scatter(1, token, float("-inf")).max(1).values
    return logits.gather(1, token)[:, 0] - others


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
    return PromptRun(list(prompts), ids, mask, lengths, residuals, cache, recorded, prediction.cpu(), first)


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


@dataclass
class AnswerScore:
    """How a prompt pass over a base batch scores an answer a [B, n]."""

    same: torch.Tensor  # [B] bool: greedy decoding gives a (over each row's answer length)
    logp: torch.Tensor  # [B] log p(a), teacher forced, summed over each row's answer length
    logit_diff: torch.Tensor  # [B] logit(a_1) minus the largest other logit


@torch.inference_mode()
def score_answer(model, base: PromptRun, first_logits: torch.Tensor, cache: DynamicCache, answer: torch.Tensor, answer_lengths: torch.Tensor) -> AnswerScore:
    """Score `answer` [B, n] (over each row's first answer_lengths tokens) after a prompt pass
    over `base`: its last logits and its prompt-only cache, which this leaves as it is."""
    logprobs, greedy = teacher_forced(model, first_logits, cache_below(model, cache, len(model.model.layers)), base.attention_mask, base.lengths, answer)
    relevant = torch.arange(answer.shape[1])[None, :] < answer_lengths[:, None]
    return AnswerScore(
        (greedy.cpu() | ~relevant).all(1), torch.where(relevant, logprobs.cpu(), 0.0).sum(1), logit_difference(first_logits, answer[:, 0]).cpu()
    )


def same_prediction(a: torch.Tensor, b: torch.Tensor, answer_lengths: torch.Tensor) -> torch.Tensor:
    """[B] bool: equal over each row's first answer_length tokens."""
    positions = torch.arange(a.shape[1])[None, :]
    relevant = positions < answer_lengths[:, None]
    return ((a == b) | ~relevant).all(1)


def correct(run: PromptRun) -> torch.Tensor:
    """[B] bool: the unpatched prediction is the true answer."""
    return same_prediction(run.prediction, run.true_answer, run.answer_lengths)


@dataclass
class Outcome:
    """One patch kind's result for one setting at one (site, layer) over a batch of pairs."""

    n_kept: int
    same: torch.Tensor  # [B] bool: r_P == r_NP
    dlogp: torch.Tensor  # [B] log p(r_NP | patched base) - log p(r_NP | base)
    dlogit: torch.Tensor  # [B] LD(patched base) - LD(base)


@dataclass
class PatchingResult:
    """What patching_counts returns: the table, the per-pair values behind it (so that later
    comparisons can resample the same pairs on both sides), accuracy and the pass counts."""

    rows: list[dict]  # one per (setting, site, layer, patch): rho, dlogp, dlogit with intervals
    pairs: list[dict]  # one per (setting, site, layer, patch, pair), for paired bootstraps
    accuracy: dict[str, int]  # correct unpatched predictions per prompt set
    runs: dict[str, int]  # batched prompt passes: unpatched, and patched per kind


def setting_runs(setting: Setting, refs: dict[str, PromptRun], srcs: dict[str, PromptRun]) -> tuple[str, PromptRun, PromptRun]:
    """(base set, base run, source run): B patches D_u into R_tau1, S patches R_tau1 into D_u."""
    if setting.v == BASIC:
        return f"reference:{setting.tau1}", refs[setting.tau1], srcs[setting.u]
    return f"patching:{setting.u}", srcs[setting.u], refs[setting.tau1]


def unpatched_scores(model, settings: Sequence[Setting], refs: dict[str, PromptRun], srcs: dict[str, PromptRun]) -> dict[tuple[str, str], AnswerScore]:
    """Scores of r_NP(tau1) on each setting's unpatched base, keyed (base set, tau1): what
    dlogp and dlogit are measured from (the eight settings need six)."""
    scores: dict[tuple[str, str], AnswerScore] = {}
    for setting in settings:
        base_set, base, _ = setting_runs(setting, refs, srcs)
        if (base_set, setting.tau1) not in scores:
            reference = refs[setting.tau1]
            scores[(base_set, setting.tau1)] = score_answer(model, base, base.first_logits, base.cache, reference.prediction, reference.answer_lengths)
    return scores


def compare(model, base: PromptRun, first_logits: torch.Tensor, cache: DynamicCache, reference: PromptRun, unpatched: AnswerScore, n_kept: int) -> Outcome:
    """A patched prompt pass over `base` (its last logits and cache) against r_NP, the
    reference's unpatched prediction, and its scores of r_NP against the unpatched base's."""
    patched = score_answer(model, base, first_logits, cache, reference.prediction, reference.answer_lengths)
    return Outcome(n_kept, patched.same, patched.logp - unpatched.logp, patched.logit_diff - unpatched.logit_diff)


def layer_outcomes(
    model,
    settings: Sequence[Setting],
    refs: dict[str, PromptRun],
    srcs: dict[str, PromptRun],
    unpatched: dict[tuple[str, str], AnswerScore],
    site: str,
    layer: int,
    kinds: Sequence[str],
    masks: dict[str, dict[tuple[str, str, int], torch.Tensor]],
    alignment: str,
    runs: Counter,
) -> dict[tuple[str, str], Outcome]:
    """Every setting's outcome per patch kind at one (site, layer) for one batch, keyed
    (setting name, kind); masks[kind][(tau1, site, layer)] for xi and random. The noop pass
    runs once per base set (with the xi mask of the first setting on that base) and every
    setting on that base scores its own r_NP on it."""
    noop: dict[str, tuple[int, torch.Tensor, DynamicCache]] = {}
    out = {}
    for setting in settings:
        base_set, base, source = setting_runs(setting, refs, srcs)
        if "noop" in kinds and base_set not in noop:
            keep = masks["xi"][(setting.tau1, site, layer)]
            noop[base_set] = (int(keep.sum()), *patched_first_logits(model, base, base, site, layer, keep, alignment))
            runs["noop"] += 1
        for kind in kinds:
            if kind == "noop":
                n_kept, first, cache = noop[base_set]
            else:
                keep = masks[kind][(setting.tau1, site, layer)]
                n_kept, (first, cache) = int(keep.sum()), patched_first_logits(model, base, source, site, layer, keep, alignment)
                runs[kind] += 1
            out[(setting.name, kind)] = compare(model, base, first, cache, refs[setting.tau1], unpatched[(base_set, setting.tau1)], n_kept)
    return out


def summarise(keys: Sequence[tuple[Setting, str, int, str]], outcomes: dict[tuple[str, str, int, str], list[Outcome]], bootstrap: Bootstrap) -> tuple[list[dict], list[dict]]:
    """Rows (rho, dlogp and dlogit with bootstrap intervals over pairs) and per-pair rows for
    `keys` = (setting, site, layer, kind). All rows share one seed, so every row sees the same
    resamples of pairs."""
    metrics = ("same", "dlogp", "dlogit")
    values = {m: np.stack([torch.cat([getattr(o, m) for o in outcomes[(s.name, site, layer, kind)]]).double().numpy() for s, site, layer, kind in keys]) for m in metrics}
    intervals = {m: bootstrap(values[m]) for m in metrics}
    n_pairs = values["same"].shape[1]
    rows, pairs = [], []
    for r, (setting, site, layer, kind) in enumerate(keys):
        rho = int(values["same"][r].sum())
        rows.append({
            "setting": setting.name, "tau1": setting.tau1, "u": setting.u, "v": setting.v, "site": site, "layer": layer, "patch": kind,
            "n_kept": outcomes[(setting.name, site, layer, kind)][0].n_kept,
            # rho counts pairs: its interval is n_pairs times that of the mean 0/1 outcome.
            "rho": rho, "rho_ci_low": n_pairs * float(intervals["same"].low[r]), "rho_ci_high": n_pairs * float(intervals["same"].high[r]),
            "n_pairs": n_pairs, "fraction": rho / n_pairs,
            **intervals["dlogp"].columns("dlogp", r), **intervals["dlogit"].columns("dlogit", r),
        })
        pairs.extend(
            {"setting": setting.name, "site": site, "layer": layer, "patch": kind, "pair": i, "same": int(same), "dlogp": float(dlogp), "dlogit": float(dlogit)}
            for i, (same, dlogp, dlogit) in enumerate(zip(*(values[m][r] for m in metrics)))
        )
    return rows, pairs


@torch.inference_mode()
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
    controls: bool = False,
    seed: int = 0,
    bootstrap: Bootstrap = Bootstrap(),
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
) -> PatchingResult:
    """rho, dlogp and dlogit for every setting, site, layer and patch kind (xi; with
    `controls` also random and noop), plus unpatched accuracy per prompt set.

    reference[task] = D*_task, others[task] = D_task (same length); keep_masks[(tau1,
    site, layer)] = the kept features. Per batch and (site, layer) this runs 8 xi, 8 random
    and 4 noop patched prompt passes, and per setting and kind one teacher-forced decode of
    r_NP (its answer length minus one single-token steps), which gives rho's comparison,
    dlogp and dlogit at once. `seed` draws the random control's features; `bootstrap` gives
    the intervals over pairs."""
    n_pairs = len(reference[pair[0]])
    settings = settings_for(pair)
    kinds = PATCH_KINDS if controls else PATCH_KINDS[:1]
    masks = {"xi": keep_masks}
    if controls:
        masks["random"] = {key: random_keep_mask(mask, seed, *key) for key, mask in keep_masks.items()}
    outcomes: dict[tuple[str, str, int, str], list[Outcome]] = {}
    accuracy = {f"{kind}:{task}": 0 for kind in ("reference", "patching") for task in pair}
    runs = Counter({kind: 0 for kind in ("unpatched", *kinds)})
    starts = list(range(0, n_pairs, batch_size))
    for start in progress(starts, len(starts)):
        chunk = slice(start, start + batch_size)
        refs = {t: unpatched_run(model, reference[t][chunk], sites, layers, pad_id) for t in pair}
        srcs = {t: unpatched_run(model, others[t][chunk], sites, layers, pad_id) for t in pair}
        runs["unpatched"] += 2 * len(pair)
        for t in pair:
            accuracy[f"reference:{t}"] += int(correct(refs[t]).sum())
            accuracy[f"patching:{t}"] += int(correct(srcs[t]).sum())
        unpatched = unpatched_scores(model, settings, refs, srcs)
        for site in sites:
            for layer in layers:
                for (name, kind), outcome in layer_outcomes(model, settings, refs, srcs, unpatched, site, layer, kinds, masks, alignment, runs).items():
                    outcomes.setdefault((name, site, layer, kind), []).append(outcome)
    keys = [(s, site, layer, kind) for s in settings for site in sites for layer in layers for kind in kinds]
    rows, pairs = summarise(keys, outcomes, bootstrap)
    return PatchingResult(rows, pairs, accuracy, dict(runs))
