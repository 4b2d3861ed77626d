"""p(answer | prompt) for answers of one or more tokens (SPEC "Prompts", paper eq. 1).

The model reads prompt + answer[:-1] (teacher forcing); the logits at the last prompt
position and at each fed answer token predict the next answer token, and
p(answer | prompt) is the product of those probabilities. With a one-token answer
(Llama 3 tokenizes 0..999 as one token) this is the paper's p̂(answer | prompt).

Only the hidden states at the answer-predicting positions go through the vocabulary
projection, so the cost does not grow with vocabulary x sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from minormech.prompts import Prompt


@dataclass
class AnswerBatch:
    """A right-padded teacher-forcing batch."""

    input_ids: torch.Tensor  # [B, S] prompt + answer[:-1]
    attention_mask: torch.Tensor  # [B, S]
    prompt_lengths: torch.Tensor  # [B]
    answer_positions: torch.Tensor  # [B, M] positions whose logits predict answer token m
    answer_ids: torch.Tensor  # [B, M]
    answer_mask: torch.Tensor  # [B, M] bool, False for padding of shorter answers

    @property
    def prompt_mask(self) -> torch.Tensor:
        """[B, S] bool: True at the prompt's own positions (not padding, not fed answer tokens)."""
        positions = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        return positions[None, :] < self.prompt_lengths[:, None]


def teacher_forced_batch(prompts: Sequence[Prompt], pad_id: int, device: torch.device | str = "cpu") -> AnswerBatch:
    sequences = [p.input_ids + p.answer_ids[:-1] for p in prompts]
    width = max(len(s) for s in sequences)
    n_answer = max(len(p.answer_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    positions = torch.zeros((len(prompts), n_answer), dtype=torch.long)
    answer_ids = torch.zeros((len(prompts), n_answer), dtype=torch.long)
    answer_mask = torch.zeros((len(prompts), n_answer), dtype=torch.bool)
    for row, (prompt, sequence) in enumerate(zip(prompts, sequences)):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
        m = len(prompt.answer_ids)
        positions[row, :m] = torch.arange(prompt.length - 1, prompt.length - 1 + m)
        answer_ids[row, :m] = torch.tensor(prompt.answer_ids)
        answer_mask[row, :m] = True
    lengths = torch.tensor([p.length for p in prompts])
    return AnswerBatch(*(t.to(device) for t in (ids, mask, lengths, positions, answer_ids, answer_mask)))


def answer_logits(model, batch: AnswerBatch) -> torch.Tensor:
    """[B, M, vocab] float32 logits at the answer-predicting positions."""
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    return model.lm_head(hidden[rows, batch.answer_positions]).float()


def answer_log_prob(model, batch: AnswerBatch) -> torch.Tensor:
    """[B] log p(answer | prompt): the answer tokens' teacher-forced log-probabilities summed."""
    log_probs = answer_logits(model, batch).log_softmax(-1)
    token_log_probs = log_probs.gather(-1, batch.answer_ids[..., None])[..., 0]
    return (token_log_probs * batch.answer_mask).sum(-1)


def answer_prob(model, batch: AnswerBatch) -> torch.Tensor:
    """[B] p(answer | prompt) (eq. 1): the product of the answer tokens' probabilities."""
    return answer_log_prob(model, batch).exp()
