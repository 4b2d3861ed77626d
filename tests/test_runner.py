"""The runner (minormech.runner) on a tiny random Llama: batching and right padding, the two
ways of scoring log p(answer) (one teacher-forced forward, or the prompt's cache), reruns
from a layer's cached input and greedy decoding against full forwards."""

import torch
from conftest import random_prompts

from minormech.runner import (
    answer_log_prob,
    answer_logits,
    batched,
    cache_below,
    greedy_continue,
    rerun_from,
    right_padded,
    score_answer,
    teacher_forced_batch,
    token_log_probs,
    unpatched_run,
)

LAYERS = [0, 1, 2]


def test_batched_keeps_order_and_cuts_the_last_batch_short():
    assert batched(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert batched([], 3) == []


def test_right_padded_rows():
    values, mask = right_padded([[5, 6, 7], [8]], -1)
    assert values.tolist() == [[5, 6, 7], [8, -1, -1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert values.dtype == mask.dtype == torch.long


def test_teacher_forced_batch_positions():
    prompts = random_prompts(3)
    batch = teacher_forced_batch(prompts, 0)
    for row, p in enumerate(prompts):
        m = len(p.answer_ids)
        assert batch.input_ids[row, : p.length + m - 1].tolist() == p.input_ids + p.answer_ids[:-1]
        assert batch.answer_positions[row, :m].tolist() == list(range(p.length - 1, p.length - 1 + m))
        assert batch.answer_mask[row].tolist() == [True] * m + [False] * (batch.answer_mask.shape[1] - m)
        assert int(batch.prompt_lengths[row]) == p.length


def test_both_ways_of_scoring_the_answer_agree(tiny):
    """log p(true answer) from one teacher-forced forward over prompt + answer[:-1] equals
    the one read off the prompt's cache (what patching and knockouts use)."""
    prompts = random_prompts(4, seed=9)
    batch = teacher_forced_batch(prompts, 0)
    with torch.no_grad():
        full = answer_log_prob(token_log_probs(answer_logits(tiny, batch), batch.answer_ids), batch.answer_mask)
    run = unpatched_run(tiny, prompts, [], LAYERS, 0)
    cached = score_answer(tiny, run, run.first_logits, run.cache, run.true_answer, run.answer_lengths)
    torch.testing.assert_close(cached.logp, full, rtol=1e-5, atol=1e-5)


def test_rerun_from_any_layer_reproduces_the_prompt_pass(tiny):
    """Without hooks, rerunning from the residual entering any layer gives the unpatched last
    logits, and leaves the run's own cache unchanged (a second rerun gives the same)."""
    run = unpatched_run(tiny, random_prompts(3, seed=2), [], LAYERS, 0)
    for layer in LAYERS:
        first, _ = rerun_from(tiny, run, layer)
        again, _ = rerun_from(tiny, run, layer)
        torch.testing.assert_close(first, run.first_logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(first, again)


def test_greedy_decoding_through_the_cache_equals_full_forwards(tiny):
    prompts = random_prompts(3, seed=4)
    run = unpatched_run(tiny, prompts, [], LAYERS, 0)
    decoded = greedy_continue(
        tiny, run.first_logits, cache_below(tiny, run.cache, len(tiny.model.layers)), run.attention_mask, run.lengths, 4
    )
    assert torch.equal(decoded[:, : run.prediction.shape[1]], run.prediction)
    for row, prompt in enumerate(prompts):
        sequence = list(prompt.input_ids)
        for step in range(4):
            with torch.no_grad():
                token = tiny(torch.tensor([sequence])).logits[0, -1].argmax().item()
            assert token == decoded[row, step].item(), (row, step)
            sequence.append(token)
