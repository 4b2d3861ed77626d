"""How far a model's own answers are from the true ones: greedy decoding of the answer's
length on held-out prompts, scored by exact match and by absolute error, against the
predictor that always answers the training prompts' mean answer.

The held-out check of training (minormech.control_model.evaluate) scores answer tokens
under teacher forcing, which says whether an answer is exactly right but not how far a
wrong one is: 120 for 121 and 900 for 121 both count as wrong. A model that has learned a
task in context (§5.4: it infers w from the prompt's examples) should land near the true
answer even when not on it, so the mean absolute error, set against that of a predictor
that ignores the prompt, is the second reading of whether it does the task.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from minormech.control_model import Example
from minormech.prompts import Prompt
from minormech.runner import batched, unpatched_run

#: An answer as the tokenizer decodes it: optional spaces, then an integer.
_LEADING_INTEGER = re.compile(r"\s*(-?\d+)")
#: Prompts decoded together.
DECODE_BATCH_SIZE = 16


@dataclass(frozen=True)
class AnswerErrors:
    """One task's decoded answers on held-out prompts."""

    prompts: int
    exact: int  # answers decoded exactly (every token the true one)
    unparsed: int  # decoded answers that do not start with an integer (left out of the errors)
    mean_absolute_error: float  # over the parsed answers
    mean_predictor_error: float  # mean |answer - training mean| over the same prompts


def answer_span(example: Example) -> slice:
    """Where the answer tokens of an example scored on its answer only lie."""
    scored = [i for i, label in enumerate(example.labels) if label != -100]
    if not scored or scored != list(range(scored[0], scored[0] + len(scored))):
        raise ValueError("an example scored on its final answer has one run of labelled tokens")
    return slice(scored[0], scored[-1] + 1)


def answer_value(tokenizer, ids: Sequence[int]) -> int | None:
    """The integer an answer's tokens start with (None when they start with none)."""
    match = _LEADING_INTEGER.match(tokenizer.decode(list(ids)))
    return int(match.group(1)) if match else None


def as_prompt(example: Example) -> Prompt:
    """An example scored on its final answer as the prompt record the runner reads."""
    span = answer_span(example)
    ids = example.input_ids
    return Prompt(example.weight_id, example.weight_id, [], 0, "", "", ids[: span.start], ids[span])


def greedy_answers(model, examples: Sequence[Example], pad_id: int) -> list[list[int]]:
    """The model's greedy continuation of each example's prompt, as many tokens as its
    answer (minormech.runner's decoding, the one activation patching scores)."""
    decoded = []
    for batch in batched([as_prompt(example) for example in examples], DECODE_BATCH_SIZE):
        run = unpatched_run(model, batch, [], [], pad_id)
        decoded += [row[: len(prompt.answer_ids)] for row, prompt in zip(run.prediction.tolist(), batch)]
    return decoded


def training_mean_answer(tokenizer, training: Sequence[Example]) -> float:
    """The mean final answer of training prompts: the constant predictor's answer."""
    values = [answer_value(tokenizer, example.input_ids[answer_span(example)]) for example in training]
    return float(np.mean([v for v in values if v is not None]))


def answer_errors(model, tokenizer, held_out: Sequence[Example], mean_answer: float, pad_id: int) -> AnswerErrors:
    """Decode every held-out answer greedily and score it against the true one."""
    model.eval()
    exact, errors, reference, unparsed = 0, [], [], 0
    for example, decoded in zip(held_out, greedy_answers(model, held_out, pad_id)):
        true_ids = example.input_ids[answer_span(example)]
        exact += decoded == true_ids
        truth, value = answer_value(tokenizer, true_ids), answer_value(tokenizer, decoded)
        reference.append(abs(truth - mean_answer))
        if value is None:
            unparsed += 1
        else:
            errors.append(abs(value - truth))
    return AnswerErrors(
        prompts=len(held_out),
        exact=int(exact),
        unparsed=unparsed,
        mean_absolute_error=float(np.mean(errors)) if errors else float("nan"),
        mean_predictor_error=float(np.mean(reference)),
    )
