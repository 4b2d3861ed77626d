"""Running prompts through a Llama-style model: batching, right padding, a prompt pass that
keeps what later reruns need, reruns from a layer's cached input, greedy decoding of an
answer's length and teacher-forced scoring of log p(answer).

Every analysis that runs the model goes through this module: activations (paper §4.1),
feature attribution (§4.2.1), activation patching (§4.3, §5.6) and the head views and the
positive-control model built on the same prompts (§5.4).

Padding is on the right, so the default position ids 0..n-1 are right for every prompt
and padded positions come after each prompt's own tokens, where the causal mask hides
them from every real position.

log p(answer | prompt) is paper eq. 1 in log space: the sum over the answer tokens of
log p(token | prompt, the answer tokens before it), each read from the logits at the
position before the token (teacher forcing). With a one-token answer (Llama 3 tokenizes
0..999 as one token) it is the paper's p̂(answer | prompt); longer answers (SmolLM2
spells numbers digit by digit) need the product of eq. 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer
from transformers.masking_utils import create_causal_mask

from minormech.hooks import site_hooks
from minormech.prompts import Prompt

T = TypeVar("T")


def no_progress(items: Iterable, total: int) -> Iterable:
    """The default progress wrapper: the items unchanged."""
    return items


@dataclass(frozen=True)
class RunOptions:
    """How prompts go through the model: `batch_size` prompts per forward pass, padded on
    the right with `pad_id` (any id: padded positions are masked and never read), and a
    progress wrapper progress(items, total) around the batches."""

    batch_size: int
    pad_id: int
    progress: Callable[[Iterable, int], Iterable] = no_progress


def batched(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """`items` cut into consecutive batches of `size` (the last one shorter), in order: the
    batch composition every analysis uses, so that a rerun with the same batch size sees
    the same padding and therefore the same floating-point results."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def right_padded(
    rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, mask), both [len(rows), longest row] long on `device`: each row's values
    from the left, `pad` after them; mask 1 at a row's own values, 0 at its padding.

    Right padding keeps position ids 0..n-1 right for every row (the prompt's tokens see
    the same positions alone or in a batch), and the causal mask hides padding from them."""
    width = max(len(row) for row in rows)
    values = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        values[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return values.to(device), mask.to(device)


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) [...] from `logits` [..., vocab] (cast to float32 before the softmax,
    whatever the model computes in) at each of `tokens` [...]: one factor of eq. 1."""
    return logits.float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]


def answer_log_prob(log_probs: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """[B] log p(answer | prompt) (eq. 1 in log space): the token log-probabilities
    `log_probs` [B, M] summed over each row's answer tokens (`relevant` [B, M] bool, False
    where a shorter answer is padded)."""
    return torch.where(relevant, log_probs, 0.0).sum(-1)


# Teacher-forced full forward passes (feature attribution differentiates through these).


@dataclass
class AnswerBatch:
    """A right-padded teacher-forcing batch: prompt + answer[:-1], and where each answer
    token is predicted."""

    input_ids: torch.Tensor  # [B, S] prompt + answer[:-1]
    attention_mask: torch.Tensor  # [B, S]
    prompt_lengths: torch.Tensor  # [B]
    answer_positions: torch.Tensor  # [B, M] positions whose logits predict answer token m
    answer_ids: torch.Tensor  # [B, M]
    answer_mask: torch.Tensor  # [B, M] bool, False for padding of shorter answers


def teacher_forced_batch(prompts: Sequence[Prompt], pad_id: int, device: torch.device | str = "cpu") -> AnswerBatch:
    """The batch that scores every prompt's answer in one forward pass: the model reads the
    prompt and all answer tokens but the last, and the logits at the last prompt position
    and at each fed answer token predict the next answer token (eq. 1)."""
    ids, mask = right_padded([p.input_ids + p.answer_ids[:-1] for p in prompts], pad_id, device)
    positions, answer_mask = right_padded(
        [list(range(p.length - 1, p.length - 1 + len(p.answer_ids))) for p in prompts], 0, device
    )
    answer_ids, _ = right_padded([p.answer_ids for p in prompts], 0, device)
    lengths = torch.tensor([p.length for p in prompts]).to(device)
    return AnswerBatch(ids, mask, lengths, positions, answer_ids, answer_mask.bool())


def answer_logits(model, batch: AnswerBatch) -> torch.Tensor:
    """[B, M, vocab] float32 logits at the answer-predicting positions. Only those hidden
    states go through the vocabulary projection, so the cost does not grow with vocabulary
    x sequence length."""
    hidden = model.model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    return model.lm_head(hidden[rows, batch.answer_positions]).float()


def answer_prob(model, batch: AnswerBatch) -> torch.Tensor:
    """[B] p(answer | prompt) (eq. 1), differentiable: the function feature attribution
    attributes (§4.2.1)."""
    return answer_log_prob(token_log_probs(answer_logits(model, batch), batch.answer_ids), batch.answer_mask).exp()


# A prompt pass and reruns from a layer's cached input (patching §4.3, head knockouts).


@dataclass
class PromptRun:
    """What one pass over a batch of prompts leaves for reruns from a layer: the residual
    entering each layer, the KV cache, the recorded site activations and the greedy
    prediction of each prompt's answer length."""

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


def run_layers(
    model, hidden: torch.Tensor, start: int, attention_mask: torch.Tensor, cache: DynamicCache
) -> torch.Tensor:
    """Decoder layers start..L-1 on the residual `hidden` entering layer `start`, for a
    prompt pass (positions 0..S-1, no earlier tokens); writes their keys and values to
    `cache` and returns the final-normed hidden states. Mirrors LlamaModel.forward.

    A change at layer `start` (a patch, a knocked-out head) cannot reach the layers below
    it, so their output is reused rather than recomputed: about (L - start) / L of a
    forward pass."""
    base = model.model
    position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
    mask = create_causal_mask(
        config=base.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        past_key_values=None,
        position_ids=position_ids,
    )
    position_embeddings = base.rotary_emb(hidden, position_ids=position_ids)
    for layer in base.layers[start:]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
    return base.norm(hidden)


def cache_below(model, source: DynamicCache, layer: int) -> DynamicCache:
    """A fresh cache holding `source`'s keys and values for layers below `layer` (shared
    tensors: DynamicCache appends by concatenation, so the source is never modified). A
    sliding-window layer (Mistral's, Qwen2's) also gets the count of tokens it has seen,
    from which it sizes the next token's attention mask: without it, decoding from the copy
    would size that mask as if no token came before."""
    cache = DynamicCache(config=model.config)
    for j in range(layer):
        target, kept = cache.layers[j], source.layers[j]
        target.lazy_initialization(kept.keys, kept.values)
        target.keys, target.values = kept.keys, kept.values
        if isinstance(target, DynamicSlidingWindowLayer):
            target.cumulative_length = kept.cumulative_length
    return cache


def last_logits(model, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, vocab] float32 logits at each row's last prompt position: the distribution of
    the first answer token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return model.lm_head(hidden[rows, lengths.to(hidden.device) - 1]).float()


def rerun_from(model, run: PromptRun, layer: int) -> tuple[torch.Tensor, DynamicCache]:
    """The prompt pass of `run` rerun from the residual entering `layer` (with whatever
    hooks are active, e.g. a patch of §4.3 or a knocked-out head): its last logits [B,
    vocab] and its prompt-only cache, to decode or score the answer on."""
    cache = cache_below(model, run.cache, layer)
    hidden = run_layers(model, run.residuals[layer], layer, run.attention_mask, cache)
    return last_logits(model, hidden, run.lengths), cache


def next_logits(
    model, token: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, step: int, cache: DynamicCache
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed answer token `step` - 1 ([B]) through the cache: logits [B, vocab] for answer
    token `step`, and the mask grown by it. Right padding stays masked; each row's new token
    gets the position id that continues its own prompt."""
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    position_ids = (lengths + step - 1)[:, None].to(mask.device)
    out = model(
        input_ids=token[:, None], attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True
    )
    return out.logits[:, -1], mask


def greedy_continue(
    model,
    first_logits: torch.Tensor,
    cache: DynamicCache,
    attention_mask: torch.Tensor,
    lengths: torch.Tensor,
    n_tokens: int,
) -> torch.Tensor:
    """[B, n_tokens] greedy tokens: the first from `first_logits` [B, vocab], the rest
    decoded with the prompt's cache (which this extends). A prediction is the greedy decode
    of as many tokens as the true answer has: with one-token answers the argmax of eq. 38."""
    token = first_logits.argmax(-1)
    tokens = [token]
    mask = attention_mask
    for step in range(1, n_tokens):
        logits, mask = next_logits(model, token, mask, lengths, step, cache)
        token = logits.argmax(-1)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def teacher_forced(
    model,
    first_logits: torch.Tensor,
    cache: DynamicCache,
    attention_mask: torch.Tensor,
    lengths: torch.Tensor,
    tokens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of `tokens` [B, n] given the prompt and the tokens before it: [B, n] its log
    probability, and [B, n] whether it is the greedy choice (the argmax greedy_continue
    takes). The first from `first_logits`, the rest by feeding `tokens` through the prompt's
    cache (which this extends). Greedy decoding reproduces a row's tokens exactly when each
    is the greedy choice after the ones before it, so one teacher-forced decode answers both
    "r_P == r_NP?" (eq. 40) and "how likely is r_NP?"."""
    tokens = tokens.to(first_logits.device)
    logits, mask = first_logits, attention_mask
    logprobs, greedy = [], []
    for step in range(tokens.shape[1]):
        if step:
            logits, mask = next_logits(model, tokens[:, step - 1], mask, lengths, step, cache)
        logprobs.append(token_log_probs(logits, tokens[:, step]))
        greedy.append(logits.argmax(-1) == tokens[:, step])
    return torch.stack(logprobs, dim=1), torch.stack(greedy, dim=1)


def logit_difference(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """[B] logit of `token` [B] minus the largest other logit: positive exactly when it is
    the greedy choice, and not squashed like a probability when the model is already sure."""
    token = token.to(logits.device)[:, None]
    others = logits.scatter(1, token, float("-inf")).max(1).values
    return logits.gather(1, token)[:, 0] - others


@torch.inference_mode()
def unpatched_run(
    model, prompts: Sequence[Prompt], sites: Sequence[str], layers: Sequence[int], pad_id: int
) -> PromptRun:
    """One pass over `prompts` (one batch): residuals entering `layers`, KV cache, the
    activations of `sites` x `layers` and the greedy prediction of each answer's length."""
    device = next(model.parameters()).device
    ids, mask = right_padded([p.input_ids for p in prompts], pad_id, device)
    lengths = mask.sum(1).cpu()
    residuals: dict[int, torch.Tensor] = {}
    handles = [
        model.model.layers[layer].register_forward_pre_hook(
            lambda _m, args, layer=layer: residuals.__setitem__(layer, args[0])
        )
        for layer in layers
    ]
    recorded: dict[tuple[str, int], torch.Tensor] = {}
    try:
        with site_hooks(model, sites, layers, lambda site, layer, out: recorded.__setitem__((site, layer), out)):
            cache = DynamicCache(config=model.config)
            hidden = model.model(
                input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True
            ).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    n_tokens = max(len(p.answer_ids) for p in prompts)
    first = last_logits(model, hidden, lengths)
    # Decoding extends the cache; reruns need the prompt-only cache, so decode on a copy.
    prediction = greedy_continue(
        model, first, cache_below(model, cache, len(model.model.layers)), mask, lengths, n_tokens
    )
    return PromptRun(list(prompts), ids, mask, lengths, residuals, cache, recorded, prediction.cpu(), first)


@dataclass
class AnswerScore:
    """How a prompt pass over a batch scores an answer a [B, n]."""

    same: torch.Tensor  # [B] bool: greedy decoding gives a (over each row's answer length)
    logp: torch.Tensor  # [B] log p(a), teacher forced, summed over each row's answer length
    logit_diff: torch.Tensor  # [B] logit(a_1) minus the largest other logit


@torch.inference_mode()
def score_answer(
    model,
    run: PromptRun,
    first_logits: torch.Tensor,
    cache: DynamicCache,
    answer: torch.Tensor,
    answer_lengths: torch.Tensor,
) -> AnswerScore:
    """Score `answer` [B, n] (over each row's first answer_lengths tokens) after a prompt pass
    over `run`'s prompts: its last logits and its prompt-only cache, which this leaves as it
    is (it decodes on a copy)."""
    logprobs, greedy = teacher_forced(
        model, first_logits, cache_below(model, cache, len(model.model.layers)), run.attention_mask, run.lengths, answer
    )
    relevant = torch.arange(answer.shape[1])[None, :] < answer_lengths[:, None]
    return AnswerScore(
        (greedy.cpu() | ~relevant).all(1),
        answer_log_prob(logprobs.cpu(), relevant),
        logit_difference(first_logits, answer[:, 0]).cpu(),
    )
