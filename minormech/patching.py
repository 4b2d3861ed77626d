"""Activation patching counts (paper §4.3, §5.6, eq. 38-40).

Setting rho(tau1, u, v): pair i has the reference prompt R_i = D*_tau1[i] and
r_NP = prediction(R_i). v = B: base R_i, source D_u[i]; v = S: base D_u[i], source R_i.
r_P = prediction(base with the kept features of one (site, layer) replaced by the
source's at aligned positions); rho = #{i : r_P == r_NP}. The kept features are the
filter of eq. 35 with h = 0.5 and op '<=' for tau1 = LR (the MD half), '>=' for MD.

A prediction is the greedy decode of as many tokens as the true answer has (with
one-token answers, the paper's argmax). r_P == r_NP is read off a teacher-forced decode of
r_NP on the patched base: greedy decoding gives r_NP exactly when each of its tokens is the
argmax after the ones before it, and the same decode gives dlogp.

Cost: every prompt runs unpatched once (minormech.runner.unpatched_run), recording what
the patched runs need: its residual stream entering each patched layer, its KV cache, its
site activations (as a source) and its own prediction. A patched run at layer i then
starts at layer i from the cached residual (layers below i cannot change: the patch is at
layer i), reuses the base's KV cache for layers below i, and decodes the remaining answer
tokens with the cache: about (L - i) / L of a forward pass instead of m full passes.

Controls (config controls.patching): beside the xi patch, a `random` patch swaps a seeded
random subset of as many features (so a difference is due to which features xi picks, not
how many), and a `noop` patch patches the base with its own activations (so it measures
the machinery itself: it must change nothing). The noop result depends only on the base
set, so it runs once per (base set, site, layer) and serves every setting with that base;
for S settings it is the unpatched agreement of D_u's prediction with r_NP.

Metrics beside rho, per pair, with a = r_NP: dlogp = log p(a | patched base) - log p(a |
base), teacher forced (eq. 1), and dlogit = LD(patched) - LD(base), LD = logit(a_1) minus
the largest other logit at the first answer position. Both move continuously where rho only
counts flips of the greedy answer. Intervals are percentile bootstraps over pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
from transformers import DynamicCache

from minormech.hooks import site_hooks
from minormech.prompts import Prompt
from minormech.runner import AnswerScore, PromptRun, RunOptions, batched, rerun_from, score_answer, unpatched_run
from minormech.tasks import stable_seed
from minormech.uncertainty import Bootstrap

BASIC, SWAPPED = "B", "S"
PATCH_KINDS = ("xi", "random", "noop")


@dataclass(frozen=True)
class Setting:
    """One of the paper's eight settings rho(tau1, u, v) (§5.6)."""

    tau1: str
    u: str
    v: str

    @property
    def name(self) -> str:
        return f"rho({self.tau1},{self.u},{self.v})"


@dataclass(frozen=True)
class PatchingSettings:
    """What patching_counts measures: the task `pair` (LR first, MD second), the patched
    `sites` x `layers`, how base and source positions are aligned ('end' or 'left'), whether
    the random and noop controls run beside the xi patch, the seed of the random control's
    features, and the bootstrap of the intervals over pairs."""

    pair: Sequence[str]
    sites: Sequence[str]
    layers: Sequence[int]
    alignment: str = "end"
    controls: bool = False
    seed: int = 0
    bootstrap: Bootstrap = Bootstrap()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The patch kinds that run: xi, and with controls random and noop."""
        return PATCH_KINDS if self.controls else PATCH_KINDS[:1]


def settings_for(pair: Sequence[str]) -> list[Setting]:
    """The eight settings of the paper for a task pair (tau1, u in the pair, v in B/S)."""
    return [Setting(t, u, v) for t, u, v in product(pair, pair, (BASIC, SWAPPED))]


def filter_op(tau1: str, pair: Sequence[str]) -> str:
    """'<=' when tau1 is the pair's first task (LR), '>=' when it is the second (MD) (§5.6)."""
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


def aligned_source_index(
    base_lengths: torch.Tensor, source_lengths: torch.Tensor, width: int, alignment: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each base position: the source position patched into it, and whether it is patched.

    'end' aligns the last prompt token with the last; 'left' the first with the first; in
    both, over the shorter prompt's length. 'last' patches the last prompt token only, with
    the source's last (the position of the paper's appendix B)."""
    positions = torch.arange(width)[None, :]
    overlap = torch.minimum(base_lengths, source_lengths)[:, None]
    if alignment in ("end", "last"):
        index = positions - base_lengths[:, None] + source_lengths[:, None]
        valid = (positions < base_lengths[:, None]) & (positions >= base_lengths[:, None] - overlap)
        if alignment == "last":
            valid &= positions == base_lengths[:, None] - 1
    elif alignment == "left":
        index = positions.expand(len(base_lengths), -1)
        valid = positions < overlap
    else:
        raise ValueError(f"patching.alignment: unknown alignment {alignment!r}; choose end, left or last")
    return index.clamp(min=0), valid


def patch_hook(base: PromptRun, source: PromptRun, site: str, layer: int, keep: torch.Tensor, alignment: str):
    """A site hook that replaces the `keep` features [width] of the base's (site, layer)
    output with the source's at aligned prompt positions (eq. 18). It patches the prompt
    pass only (tensors as wide as the base batch); decode steps of one token pass through."""
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
def patched_first_logits(
    model, base: PromptRun, source: PromptRun, site: str, layer: int, keep: torch.Tensor, alignment: str = "end"
) -> tuple[torch.Tensor, DynamicCache]:
    """Logits [B, vocab] after the base prompt with (site, layer) patched, computed from the
    residual entering `layer` (nothing below it is rerun), and the cache to decode on."""
    with site_hooks(model, [site], [layer], patch_hook(base, source, site, layer, keep, alignment)):
        return rerun_from(model, base, layer)


def same_prediction(a: torch.Tensor, b: torch.Tensor, answer_lengths: torch.Tensor) -> torch.Tensor:
    """[B] bool: equal over each row's first answer_length tokens (the indicator of eq. 40)."""
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
    accuracy: dict[tuple[str, str], int]  # correct unpatched predictions per (prompt set, task)
    runs: dict[str, int]  # batched prompt passes: unpatched, and patched per kind


@dataclass(frozen=True)
class PairBatch:
    """One batch of pairs, run unpatched: the reference runs R_tau (refs[tau]), the other
    runs D_u (srcs[u]) and the scores of r_NP(tau1) on each setting's unpatched base."""

    settings: list[Setting]
    refs: dict[str, PromptRun]
    srcs: dict[str, PromptRun]
    unpatched: dict[tuple[str, str], AnswerScore]


def setting_runs(
    setting: Setting, refs: dict[str, PromptRun], srcs: dict[str, PromptRun]
) -> tuple[str, PromptRun, PromptRun]:
    """(base set, base run, source run): B patches D_u into R_tau1, S patches R_tau1 into D_u."""
    if setting.v == BASIC:
        return f"reference:{setting.tau1}", refs[setting.tau1], srcs[setting.u]
    return f"patching:{setting.u}", srcs[setting.u], refs[setting.tau1]


def unpatched_scores(
    model, settings: Sequence[Setting], refs: dict[str, PromptRun], srcs: dict[str, PromptRun]
) -> dict[tuple[str, str], AnswerScore]:
    """Scores of r_NP(tau1) on each setting's unpatched base, keyed (base set, tau1): what
    dlogp and dlogit are measured from (the eight settings need six)."""
    scores: dict[tuple[str, str], AnswerScore] = {}
    for setting in settings:
        base_set, base, _ = setting_runs(setting, refs, srcs)
        if (base_set, setting.tau1) not in scores:
            reference = refs[setting.tau1]
            scores[(base_set, setting.tau1)] = score_answer(
                model, base, base.first_logits, base.cache, reference.prediction, reference.answer_lengths
            )
    return scores


def compare(
    model,
    base: PromptRun,
    first_logits: torch.Tensor,
    cache: DynamicCache,
    reference: PromptRun,
    unpatched: AnswerScore,
    n_kept: int,
) -> Outcome:
    """A patched prompt pass over `base` (its last logits and cache) against r_NP, the
    reference's unpatched prediction, and its scores of r_NP against the unpatched base's."""
    patched = score_answer(model, base, first_logits, cache, reference.prediction, reference.answer_lengths)
    return Outcome(n_kept, patched.same, patched.logp - unpatched.logp, patched.logit_diff - unpatched.logit_diff)


def layer_outcomes(
    model,
    batch: PairBatch,
    site: str,
    layer: int,
    masks: dict[str, dict[tuple[str, str, int], torch.Tensor]],
    settings: PatchingSettings,
    runs: Counter,
) -> dict[tuple[str, str], Outcome]:
    """Every setting's outcome per patch kind at one (site, layer) for one batch, keyed
    (setting name, kind); masks[kind][(tau1, site, layer)] for xi and random. The noop pass
    runs once per base set (patching the base with itself changes nothing whichever
    features it writes, so the first setting's xi mask serves), every setting on that base
    scores its own r_NP on it, and each row reports its own setting's xi feature count.
    `runs` counts the patched passes."""
    kinds, alignment = settings.kinds, settings.alignment
    noop: dict[str, tuple[torch.Tensor, DynamicCache]] = {}
    out = {}
    for setting in batch.settings:
        base_set, base, source = setting_runs(setting, batch.refs, batch.srcs)
        if "noop" in kinds and base_set not in noop:
            keep = masks["xi"][(setting.tau1, site, layer)]
            noop[base_set] = patched_first_logits(model, base, base, site, layer, keep, alignment)
            runs["noop"] += 1
        for kind in kinds:
            if kind == "noop":
                n_kept, (first, cache) = int(masks["xi"][(setting.tau1, site, layer)].sum()), noop[base_set]
            else:
                keep = masks[kind][(setting.tau1, site, layer)]
                n_kept, (first, cache) = (
                    int(keep.sum()),
                    patched_first_logits(model, base, source, site, layer, keep, alignment),
                )
                runs[kind] += 1
            out[(setting.name, kind)] = compare(
                model, base, first, cache, batch.refs[setting.tau1], batch.unpatched[(base_set, setting.tau1)], n_kept
            )
    return out


def summarise(
    keys: Sequence[tuple[Setting, str, int, str]],
    outcomes: dict[tuple[str, str, int, str], list[Outcome]],
    bootstrap: Bootstrap,
) -> tuple[list[dict], list[dict]]:
    """Rows (rho of eq. 40, dlogp and dlogit with bootstrap intervals over pairs) and per-pair
    rows for `keys` = (setting, site, layer, kind). All rows share one seed, so every row
    sees the same resamples of pairs."""
    metrics = ("same", "dlogp", "dlogit")
    values = {
        m: np.stack(
            [
                torch.cat([getattr(o, m) for o in outcomes[(s.name, site, layer, kind)]]).double().numpy()
                for s, site, layer, kind in keys
            ]
        )
        for m in metrics
    }
    intervals = {m: bootstrap(values[m]) for m in metrics}
    n_pairs = values["same"].shape[1]
    rows, pairs = [], []
    for r, (setting, site, layer, kind) in enumerate(keys):
        rho = int(values["same"][r].sum())
        rows.append(
            {
                "setting": setting.name,
                "tau1": setting.tau1,
                "u": setting.u,
                "v": setting.v,
                "site": site,
                "layer": layer,
                "patch": kind,
                "n_kept": outcomes[(setting.name, site, layer, kind)][0].n_kept,
                # rho counts pairs: its interval is n_pairs times that of the mean 0/1 outcome.
                "rho": rho,
                "rho_ci_low": n_pairs * float(intervals["same"].low[r]),
                "rho_ci_high": n_pairs * float(intervals["same"].high[r]),
                "n_pairs": n_pairs,
                "fraction": rho / n_pairs,
                **intervals["dlogp"].columns("dlogp", r),
                **intervals["dlogit"].columns("dlogit", r),
            }
        )
        pairs.extend(
            {
                "setting": setting.name,
                "site": site,
                "layer": layer,
                "patch": kind,
                "pair": i,
                "same": int(same),
                "dlogp": float(dlogp),
                "dlogit": float(dlogit),
            }
            for i, (same, dlogp, dlogit) in enumerate(zip(*(values[m][r] for m in metrics)))
        )
    return rows, pairs


@torch.inference_mode()
def patching_counts(
    model,
    reference: dict[str, Sequence[Prompt]],
    others: dict[str, Sequence[Prompt]],
    keep_masks: dict[tuple[str, str, int], torch.Tensor],
    settings: PatchingSettings,
    run: RunOptions,
) -> PatchingResult:
    """rho, dlogp and dlogit for every setting, site, layer and patch kind (xi; with
    `settings.controls` also random and noop), plus unpatched accuracy per prompt set.

    reference[task] = D*_task, others[task] = D_task (same length, eq. 36-37);
    keep_masks[(tau1, site, layer)] = the kept features (eq. 39). Per batch and (site, layer)
    this runs 8 xi, 8 random and 4 noop patched prompt passes, and per setting and kind one
    teacher-forced decode of r_NP (its answer length minus one single-token steps), which
    gives rho's comparison, dlogp and dlogit at once."""
    pair = settings.pair
    setting_list = settings_for(pair)
    kinds = settings.kinds
    masks = {"xi": keep_masks}
    if settings.controls:
        masks["random"] = {key: random_keep_mask(mask, settings.seed, *key) for key, mask in keep_masks.items()}
    outcomes: dict[tuple[str, str, int, str], list[Outcome]] = {}
    accuracy = {(kind, task): 0 for kind in ("reference", "patching") for task in pair}
    runs = Counter({kind: 0 for kind in ("unpatched", *kinds)})
    reference_batches = {t: batched(reference[t], run.batch_size) for t in pair}
    other_batches = {t: batched(others[t], run.batch_size) for t in pair}
    n_batches = len(reference_batches[pair[0]])
    for b in run.progress(range(n_batches), n_batches):
        refs = {
            t: unpatched_run(model, reference_batches[t][b], settings.sites, settings.layers, run.pad_id) for t in pair
        }
        srcs = {t: unpatched_run(model, other_batches[t][b], settings.sites, settings.layers, run.pad_id) for t in pair}
        runs["unpatched"] += 2 * len(pair)
        for t in pair:
            accuracy[("reference", t)] += int(correct(refs[t]).sum())
            accuracy[("patching", t)] += int(correct(srcs[t]).sum())
        batch = PairBatch(setting_list, refs, srcs, unpatched_scores(model, setting_list, refs, srcs))
        for site in settings.sites:
            for layer in settings.layers:
                for (name, kind), outcome in layer_outcomes(model, batch, site, layer, masks, settings, runs).items():
                    outcomes.setdefault((name, site, layer, kind), []).append(outcome)
    keys = [
        (s, site, layer, kind)
        for s in setting_list
        for site in settings.sites
        for layer in settings.layers
        for kind in kinds
    ]
    rows, pairs = summarise(keys, outcomes, settings.bootstrap)
    return PatchingResult(rows, pairs, accuracy, dict(runs))
