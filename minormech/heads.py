"""Head-level views: which attention heads carry each task.

Three measurements per (layer, query head), all at the last prompt position, from one
unpatched pass per batch that records q/k/v of every layer and the residual entering it:

- **Log-probability increase** (Yu and Ananiadou, in-context heads, the "locate" step):
  I = log p(a_1 | norm(x + head output)) - log p(a_1 | norm(x)), where x is the residual
  entering the layer at the last position, the head output is that head's attention
  output passed through its slice of o_proj, norm is the model's final RMSNorm and p the
  unembedding's softmax. a_1 is the first answer token: one position's residual predicts
  only the next token (for Llama 3 it is the whole answer).
- **Knockout** (Yu and Ananiadou, comparative neuron analysis, §3.2): the head's slice of
  the o_proj input set to zero at every position, the model rerun from the layer's cached
  input (layers below cannot change) and the answer scored as patching scores it
  (log p(answer) teacher forced over all its tokens, paper eq. 1; "correct" = greedy decode
  of the true answer). The head stays knocked out while the answer's later tokens are decoded.
- **Attention to the examples' answers**: for the top heads by I, the attention weight from
  the last position to each in-context example's answer tokens (summed over the answer's
  tokens), beside the example's index and the distance of its x from the query's x: the
  in-context heads paper says query and key act as "two towers" scoring that similarity;
  Bakalova et al. (Table 4) dispute it.

A head's output is computed from the recorded q/k/v as the model computes it: rotary
embeddings applied with the model's own rotary module, query head h reading key/value
head h // (n_heads / n_kv_heads) (grouped-query attention, as transformers' repeat_kv),
softmax in float32, the causal mask (the last position sees every prompt token).
tests/test_heads.py checks it against the model's own o_proj input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from minormech.hooks import hook_name
from minormech.prompts import Prompt
from minormech.runner import PromptRun, RunOptions, batched, rerun_from, score_answer, token_log_probs, unpatched_run
from minormech.sites import HEAD_SITES, head_count
from minormech.uncertainty import Bootstrap


@dataclass(frozen=True)
class HeadLayout:
    """Attention geometry of a Llama-style model."""

    n_heads: int
    n_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model) -> HeadLayout:
        return cls.of_config(model.config)

    @classmethod
    def of_config(cls, config) -> HeadLayout:
        """From a transformers config (Llama's head_dim defaults to hidden_size / heads)."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            config.num_attention_heads,
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim,
        )

    def heads_of(self, site: str) -> int | None:
        """Heads of head_dim features that `site` splits into (minormech.sites: q the query
        heads, k and v the key/value heads); None for a site without head slices."""
        return head_count(site, self.n_heads, self.n_kv_heads)

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads


@dataclass
class HeadOutputs:
    """One layer's heads at each row's last prompt position."""

    z: torch.Tensor  # [B, H, head_dim]: attention output of each head (the o_proj input slices)
    attention: torch.Tensor  # [B, H, T] float32: attention weights over prompt positions


def head_outputs(
    model, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor
) -> HeadOutputs:
    """Every query head's attention output at each row's last prompt position, from the
    q/k/v projections [B, T, width] of one right-padded batch (positions 0..T-1)."""
    layout = HeadLayout.of(model)
    batch, width = q.shape[0], q.shape[1]
    queries = q.view(batch, width, layout.n_heads, layout.head_dim).transpose(1, 2)
    keys = k.view(batch, width, layout.n_kv_heads, layout.head_dim).transpose(1, 2)
    values = v.view(batch, width, layout.n_kv_heads, layout.head_dim).transpose(1, 2)
    position_ids = torch.arange(width, device=q.device)[None, :]
    cos, sin = model.model.rotary_emb(values, position_ids=position_ids)
    queries, keys = apply_rotary_pos_emb(queries, keys, cos, sin)
    keys = keys.repeat_interleave(layout.group, dim=1)
    values = values.repeat_interleave(layout.group, dim=1)
    lengths = lengths.to(q.device)
    last_query = queries[torch.arange(batch, device=q.device), :, lengths - 1]  # [B, H, hd]
    scores = torch.einsum("bhd,bhtd->bht", last_query, keys) * model.model.layers[layer].self_attn.scaling
    visible = torch.arange(width, device=q.device)[None, :] < lengths[:, None]
    scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
    attention = torch.softmax(scores, dim=-1, dtype=torch.float32)
    z = torch.einsum("bht,bhtd->bhd", attention.to(values.dtype), values)
    return HeadOutputs(z, attention)


def head_residual_contributions(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """[B, H, hidden]: what each head adds to the residual stream (its o_proj slice applied
    to its output; o_proj has no bias in Llama, and a bias would belong to no head)."""
    layout = HeadLayout.of(model)
    weight = model.model.layers[layer].self_attn.o_proj.weight  # [hidden, H * hd]
    return torch.einsum(
        "bhd,mhd->bhm", z.to(weight.dtype), weight.view(weight.shape[0], layout.n_heads, layout.head_dim)
    )


def final_logprobs(model, residual: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) [B, ...] when `residual` [B, ..., hidden] is the last hidden state: the
    final norm, then the unembedding."""
    logits = model.lm_head(model.model.norm(residual)).float()
    index = tokens.to(logits.device).view(-1, *([1] * (logits.dim() - 2)))
    return token_log_probs(logits, index.expand(*logits.shape[:-1]))


def logprob_increase(
    model, layer: int, residual_last: torch.Tensor, contributions: torch.Tensor, first_answer: torch.Tensor
) -> torch.Tensor:
    """[B, H] I = log p(a_1 | norm(x + head)) - log p(a_1 | norm(x)) with x = `residual_last`
    [B, hidden] entering `layer` and head = `contributions` [B, H, hidden]."""
    base = final_logprobs(model, residual_last, first_answer)
    with_head = final_logprobs(model, residual_last[:, None, :] + contributions.to(residual_last.dtype), first_answer)
    return with_head - base[:, None]


@contextmanager
def knocked_out(model, layer: int, head: int | None) -> Iterator[None]:
    """Zero query head `head`'s slice of o_proj's input at `layer` (every position, prompt
    and decode steps); head None zeroes every head of the layer."""
    layout = HeadLayout.of(model)
    start, stop = (
        (0, layout.n_heads * layout.head_dim)
        if head is None
        else (head * layout.head_dim, (head + 1) * layout.head_dim)
    )

    def zero(_module, args):
        (inputs,) = args
        inputs = inputs.clone()
        inputs[..., start:stop] = 0
        return (inputs,)

    handle = model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zero)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def knockout_scores(model, run: PromptRun, layer: int, head: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] log p(true answer), [B] whether greedy decoding gives it) with `head` of `layer`
    knocked out, rerun from the residual entering `layer`."""
    with knocked_out(model, layer, head):
        first, cache = rerun_from(model, run, layer)
        score = score_answer(model, run, first, cache, run.true_answer, run.answer_lengths)
    return score.logp, score.same


@torch.inference_mode()
def unpatched_answer_scores(model, run: PromptRun) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] log p(true answer), [B] correct) of the unpatched pass."""
    score = score_answer(model, run, run.first_logits, run.cache, run.true_answer, run.answer_lengths)
    return score.logp, score.same


@dataclass
class ExampleAnswers:
    """Where a prompt's complete examples put their answers, and how their x relate to the query's."""

    spans: list[tuple[int, int]]  # token [start, stop) of each example's Output value
    distance: np.ndarray  # [k] Euclidean distance of each example's x from the query's x


def example_answers(prompt: Prompt, tokenizer) -> ExampleAnswers:
    """Token spans of every complete example's answer (not the query's, which the prompt
    ends before) and the distance of each example's x from the query's x, from the examples
    the prompt record stores.

    Spans come from the tokenizer's character offsets of the prompt text, which must give
    the prompt's own input_ids (it raises otherwise: a prompt file from another tokenizer)."""
    if len(prompt.example_y) != prompt.n_examples:
        raise ValueError(
            f"prompt {prompt.id}: the record holds {len(prompt.example_y)} examples, not its {prompt.n_examples}"
        )
    encoded = tokenizer(prompt.text, return_offsets_mapping=True)
    if list(encoded["input_ids"]) != list(prompt.input_ids):
        raise ValueError(
            f"prompt {prompt.id}: its text does not tokenize to its input_ids; "
            "the prompt file was made with another tokenizer"
        )
    offsets = encoded["offset_mapping"]
    spans = []
    for begin, end in prompt.output_spans()[:-1]:
        tokens = [i for i, (a, b) in enumerate(offsets) if a < end and b > begin]
        spans.append((tokens[0], tokens[-1] + 1))
    x = np.array(prompt.example_x[:-1], dtype=np.int64).reshape(len(spans), -1)
    query = np.array(prompt.example_x[-1], dtype=np.int64)
    return ExampleAnswers(spans, np.sqrt(((x - query[None, :]) ** 2).sum(1)))


@dataclass(frozen=True)
class HeadSettings:
    """Config key `heads` (the measurement's part): the layers whose every query head is
    knocked out (one rerun per head and batch; none = no knockouts) and how many top heads
    get attention rows."""

    knockout_layers: tuple[int, ...] = ()
    top: int = 4


@dataclass
class HeadResults:
    """Per-prompt head measurements of one task (every array [N, L, H] over the prompts,
    the analysed layers and the query heads)."""

    layers: list[int]
    logprob_increase: np.ndarray
    knockout_dlogp: np.ndarray | None  # log p(answer | head knocked out) - log p(answer); NaN: not knocked out
    knockout_dcorrect: np.ndarray | None  # correct(knocked out) - correct, in {-1, 0, 1}; NaN: not knocked out
    unpatched_correct: np.ndarray  # [N] bool
    attention_rows: list[dict]  # one row per (prompt, top head, example)


def top_heads(increase: np.ndarray, layers: Sequence[int], count: int) -> list[tuple[int, int]]:
    """The `count` (layer, head) pairs with the largest mean log-probability increase."""
    mean = increase.mean(0)
    order = np.argsort(-mean, axis=None, kind="stable")[:count]
    return [(layers[i // mean.shape[1]], int(i % mean.shape[1])) for i in order]


@torch.inference_mode()
def head_results(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    settings: HeadSettings,
    run_options: RunOptions,
) -> HeadResults:
    """All head measurements of one task's prompts. The top heads for the attention rows
    are chosen from this task's mean I over all its prompts, so attention is recorded in a
    second pass over the recorded batches (kept in memory: q/k of the analysed layers)."""
    layout = HeadLayout.of(model)
    knockout, n_top, pad_id = bool(settings.knockout_layers), settings.top, run_options.pad_id
    increase, dlogp, dcorrect, correct_rows, kept = [], [], [], [], []
    chunks = batched(list(prompts), run_options.batch_size)
    for chunk in run_options.progress(chunks, len(chunks)):
        run = unpatched_run(model, chunk, ["q", "k", "v"], layers, pad_id)
        first_answer = torch.tensor([p.answer_ids[0] for p in chunk])
        rows = torch.arange(len(chunk))
        last = run.lengths - 1
        per_layer, weights = [], {}
        for layer in layers:
            heads = head_outputs(
                model, layer, run.sites[("q", layer)], run.sites[("k", layer)], run.sites[("v", layer)], run.lengths
            )
            residual = run.residuals[layer][rows, last.to(run.residuals[layer].device)]
            per_layer.append(
                logprob_increase(
                    model, layer, residual, head_residual_contributions(model, layer, heads.z), first_answer
                ).cpu()
            )
            weights[layer] = heads.attention.cpu()
        increase.append(torch.stack(per_layer, dim=1))  # [B, L, H]
        logp, correct = unpatched_answer_scores(model, run)
        correct_rows.append(correct)
        if knockout:
            chunk_dlogp = torch.full((len(chunk), len(layers), layout.n_heads), torch.nan)
            chunk_dcorrect = torch.full((len(chunk), len(layers), layout.n_heads), torch.nan)
            for i, layer in enumerate(layers):
                for head in range(layout.n_heads) if layer in settings.knockout_layers else ():
                    knocked_logp, knocked_correct = knockout_scores(model, run, layer, head)
                    chunk_dlogp[:, i, head] = knocked_logp - logp
                    chunk_dcorrect[:, i, head] = knocked_correct.float() - correct.float()
            dlogp.append(chunk_dlogp)
            dcorrect.append(chunk_dcorrect)
        kept.append((chunk, weights))
    increase_all = torch.cat(increase).double().numpy()
    chosen = top_heads(increase_all, list(layers), n_top)
    attention_rows = []
    for chunk, weights in kept:
        for row, prompt in enumerate(chunk):
            answers = example_answers(prompt, tokenizer)
            for rank, (layer, head) in enumerate(chosen):
                attention = weights[layer][row, head]
                for example, ((start, stop), distance) in enumerate(zip(answers.spans, answers.distance)):
                    attention_rows.append(
                        {
                            "prompt": prompt.id,
                            "rank": rank,
                            "layer": layer,
                            "head": head,
                            "example": example,
                            "examples_in_prompt": len(answers.spans),
                            "distance": float(distance),
                            "attention": float(attention[start:stop].sum()),
                        }
                    )
    return HeadResults(
        list(layers),
        increase_all,
        torch.cat(dlogp).double().numpy() if knockout else None,
        torch.cat(dcorrect).double().numpy() if knockout else None,
        torch.cat(correct_rows).numpy(),
        attention_rows,
    )


def head_table(results: HeadResults, bootstrap: Bootstrap) -> list[dict]:
    """One row per (layer, head): the mean over prompts of I and, with knockouts, of the
    changes in log p(answer) and in correctness, each with its bootstrap interval over
    prompts; beside them the unpatched accuracy of the prompts."""
    n_prompts, n_layers, n_heads = results.logprob_increase.shape
    measures = {"logprob_increase": results.logprob_increase}
    if results.knockout_dlogp is not None:
        measures.update(knockout_dlogp=results.knockout_dlogp, knockout_dcorrect=results.knockout_dcorrect)
    # [L * H, N]: one bootstrap call per measure, so every (layer, head) sees the same resamples
    intervals = {name: bootstrap(values.reshape(n_prompts, -1).T) for name, values in measures.items()}
    rows = []
    for i, layer in enumerate(results.layers):
        for head in range(n_heads):
            row = {
                "layer": layer,
                "head": head,
                "n_prompts": n_prompts,
                "unpatched_accuracy": float(results.unpatched_correct.mean()),
            }
            for name in ("logprob_increase", "knockout_dlogp", "knockout_dcorrect"):
                row.update(
                    intervals[name].columns(name, i * n_heads + head)
                    if name in intervals
                    else {name: np.nan, f"{name}_ci_low": np.nan, f"{name}_ci_high": np.nan}
                )
            rows.append(row)
    return rows


def head_xi(xi: dict[str, torch.Tensor], layout: HeadLayout, layers: Sequence[int]) -> list[dict]:
    """xi summed within each head's slice of q (query heads) and k/v (key/value heads), per
    layer: rows {site, layer, head, xi_sum, xi_mean}. The o site is o_proj's output and the
    resid_* sites the residual stream, coordinates that mix all heads, so they have no head
    slices."""
    rows = []
    for site, n in ((site, layout.heads_of(site)) for site in HEAD_SITES):
        for layer in layers:
            name = hook_name(site, layer)
            if name not in xi:
                continue
            per_head = xi[name].double().view(n, layout.head_dim)
            rows.extend(
                {
                    "site": site,
                    "layer": layer,
                    "head": h,
                    "xi_sum": float(per_head[h].sum()),
                    "xi_mean": float(per_head[h].mean()),
                }
                for h in range(n)
            )
    return rows
