"""Head-level views (minormech.heads): head outputs from cached q/k/v against the model's
own attention, knockouts against zeroing o_proj, grouped-query attention on the tiny Llama
(4 query heads, 2 key/value heads), and example-answer spans on real prompts."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_prompts

from minormech.head_figures import attention_figure, head_heatmap_figure
from minormech.heads import (
    HeadLayout,
    HeadResults,
    HeadSettings,
    example_answers,
    head_outputs,
    head_residual_contributions,
    head_results,
    head_table,
    head_xi,
    knocked_out,
    knockout_scores,
    logprob_increase,
    top_heads,
    unpatched_answer_scores,
)
from minormech.hooks import hook_name
from minormech.prompts import generate_prompts, prompt_weight_ids
from minormech.runner import RunOptions, unpatched_run
from minormech.tasks import get_task, make_weight_table
from minormech.uncertainty import Bootstrap

LAYERS = [0, 1, 2]


def o_proj_inputs(model, run):
    """The model's own attention output per head: o_proj's input [B, T, H * hd] per layer."""
    seen = {}
    handles = [
        model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
            lambda _m, args, layer=layer: seen.__setitem__(layer, args[0])
        )
        for layer in LAYERS
    ]
    try:
        with torch.no_grad():
            model(run.input_ids, attention_mask=run.attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_head_output_from_cached_qkv_equals_the_models_attention(tiny):
    """Right-padded prompts of different lengths: each head's output at the last prompt
    position, computed from the recorded q/k/v (rotary, GQA, causal mask), equals the slice of
    o_proj's input the model computed; the heads' o_proj slices sum to the o site."""
    run = unpatched_run(tiny, random_prompts(4, seed=3), ["q", "k", "v", "o"], LAYERS, 0)
    layout = HeadLayout.of(tiny)
    assert (layout.n_heads, layout.n_kv_heads, layout.group) == (4, 2, 2)
    own = o_proj_inputs(tiny, run)
    rows, last = torch.arange(4), run.lengths - 1
    for layer in LAYERS:
        heads = head_outputs(
            tiny, layer, run.sites[("q", layer)], run.sites[("k", layer)], run.sites[("v", layer)], run.lengths
        )
        expected = own[layer][rows, last].view(4, layout.n_heads, layout.head_dim)
        torch.testing.assert_close(heads.z, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(heads.attention.sum(-1), torch.ones(4, layout.n_heads))
        assert all(heads.attention[r, :, run.lengths[r] :].sum() == 0 for r in range(4))  # padding gets no attention
        contributions = head_residual_contributions(tiny, layer, heads.z)
        torch.testing.assert_close(contributions.sum(1), run.sites[("o", layer)][rows, last], rtol=1e-5, atol=1e-6)


def test_grouped_query_heads_read_their_key_value_head(tiny):
    """Changing key/value head 1's keys changes query heads 2 and 3 (its group) only."""
    run = unpatched_run(tiny, random_prompts(3, seed=4), ["q", "k", "v"], [1], 0)
    q, k, v = (run.sites[(s, 1)] for s in "qkv")
    layout = HeadLayout.of(tiny)
    before = head_outputs(tiny, 1, q, k, v, run.lengths).z
    changed = k.clone()
    changed[..., layout.head_dim : 2 * layout.head_dim] += torch.randn_like(
        changed[..., layout.head_dim : 2 * layout.head_dim]
    )
    after = head_outputs(tiny, 1, q, changed, v, run.lengths).z
    moved = (after - before).abs().amax(dim=(0, 2))
    assert moved[:2].max() == 0 and moved[2:].min() > 1e-4, moved


def test_knocking_out_every_head_equals_zeroing_the_o_proj_input(tiny):
    run = unpatched_run(tiny, random_prompts(3, seed=5), [], LAYERS, 0)
    layout = HeadLayout.of(tiny)
    for layer in LAYERS:
        handle = tiny.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
            lambda _m, args: (torch.zeros_like(args[0]),)
        )
        try:
            with torch.no_grad():
                zeroed = tiny(run.input_ids, attention_mask=run.attention_mask).logits  # o_proj's input zeroed
        finally:
            handle.remove()
        assert not torch.allclose(zeroed, tiny(run.input_ids, attention_mask=run.attention_mask).logits)
        with torch.no_grad(), knocked_out(tiny, layer, None):
            every = tiny(run.input_ids, attention_mask=run.attention_mask).logits
        with (
            torch.no_grad(),
            knocked_out(tiny, layer, 0),
            knocked_out(tiny, layer, 1),
            knocked_out(tiny, layer, 2),
            knocked_out(tiny, layer, 3),
        ):
            one_by_one = tiny(run.input_ids, attention_mask=run.attention_mask).logits
        assert layout.n_heads == 4
        torch.testing.assert_close(every, zeroed)
        torch.testing.assert_close(one_by_one, zeroed)


def test_knockout_from_cached_layer_input_equals_full_forward_with_the_head_removed(tiny):
    """knockout_scores reruns only the layers from the knocked-out one, on the cached
    residual and the cache below it; a full teacher-forced forward with the knockout gives
    the same answer log-probability and greedy verdict."""
    run = unpatched_run(tiny, random_prompts(3, seed=6), [], LAYERS, 0)
    answers = [p.answer_ids for p in run.prompts]
    for layer in LAYERS:
        for head in (0, 3):
            logp, same = knockout_scores(tiny, run, layer, head)
            with knocked_out(tiny, layer, head):
                for row, prompt in enumerate(run.prompts):
                    ids = torch.tensor([prompt.input_ids + answers[row]])
                    with torch.no_grad():
                        logits = tiny(ids).logits[0, prompt.length - 1 : -1].float()
                    steps = logits.log_softmax(-1).gather(1, torch.tensor(answers[row])[:, None])[:, 0]
                    torch.testing.assert_close(logp[row], steps.sum(), rtol=1e-5, atol=1e-5)
                    assert bool(same[row]) == bool((logits.argmax(-1) == torch.tensor(answers[row])).all())


def test_unpatched_answer_scores_are_teacher_forced_log_probabilities(tiny):
    run = unpatched_run(tiny, random_prompts(3, seed=7), [], LAYERS, 0)
    logp, _ = unpatched_answer_scores(tiny, run)
    for row, prompt in enumerate(run.prompts):
        with torch.no_grad():
            logits = (
                tiny(torch.tensor([prompt.input_ids + prompt.answer_ids])).logits[0, prompt.length - 1 : -1].float()
            )
        torch.testing.assert_close(
            logp[row],
            logits.log_softmax(-1).gather(1, torch.tensor(prompt.answer_ids)[:, None]).sum(),
            rtol=1e-5,
            atol=1e-5,
        )


def test_logprob_increase_of_the_whole_layer_is_the_attention_layers_effect(tiny):
    """Adding all heads at once is adding the attention output: on the last layer's input,
    x + attention output + MLP(...) is the final residual, so I of the sum of heads plus the
    MLP reproduces the model's own log-probabilities of the first answer token."""
    run = unpatched_run(tiny, random_prompts(3, seed=8), ["q", "k", "v", "mlp"], [2], 0)
    rows, last = torch.arange(3), run.lengths - 1
    heads = head_outputs(tiny, 2, *(run.sites[(s, 2)] for s in "qkv"), run.lengths)
    every_head = (
        head_residual_contributions(tiny, 2, heads.z).sum(1, keepdim=True) + run.sites[("mlp", 2)][rows, last][:, None]
    )
    first = torch.tensor([p.answer_ids[0] for p in run.prompts])
    residual = run.residuals[2][rows, last]
    increase = logprob_increase(tiny, 2, residual, every_head, first)[:, 0]
    base = tiny.lm_head(tiny.model.norm(residual)).float().log_softmax(-1)[rows, first]
    own = run.first_logits.log_softmax(-1)[rows, first]
    torch.testing.assert_close(base + increase, own, rtol=1e-5, atol=1e-5)


def test_top_heads_are_the_largest_mean_increases():
    increase = np.zeros((2, 3, 4))
    increase[:, 1, 2] = 5.0
    increase[:, 2, 0] = 3.0
    increase[0, 0, 1] = 8.0  # one prompt only: mean 4
    assert top_heads(increase, [0, 5, 9], 3) == [(5, 2), (0, 1), (9, 0)]


def test_head_xi_sums_each_heads_slice():
    layout = HeadLayout(n_heads=4, n_kv_heads=2, head_dim=3)
    xi = {hook_name("q", 0): torch.arange(12.0), hook_name("k", 0): torch.ones(6), hook_name("o", 0): torch.ones(8)}
    rows = head_xi(xi, layout, [0])
    q = [r["xi_sum"] for r in rows if r["site"] == "q"]
    assert q == [3.0, 12.0, 21.0, 30.0]
    assert [r["xi_sum"] for r in rows if r["site"] == "k"] == [3.0, 3.0]
    assert {r["site"] for r in rows} == {"q", "k"}  # o has no head slices; v absent from xi


def _real_prompts(tokenizer, task, n=3):
    table = make_weight_table(get_task(task), 40, 0)
    return generate_prompts(
        get_task(task), table, prompt_weight_ids("attribution", table, 0, n), "attribution", tokenizer, 128, 0
    )


@pytest.mark.parametrize("task", ["LR", "MD"])
def test_example_answer_spans_cover_each_examples_output_value(smollm2_tokenizer, task):
    for prompt in _real_prompts(smollm2_tokenizer, task):
        answers = example_answers(prompt, smollm2_tokenizer)
        assert len(answers.spans) == prompt.n_examples - 1 >= 1
        values = [
            line.split("Output: ")[1]
            for line in prompt.text.split("\n")
            if line.startswith("Output: ") and line != "Output: "
        ]
        decoded = [smollm2_tokenizer.decode(prompt.input_ids[a:b]).strip() for a, b in answers.spans]
        assert decoded == values
        assert (answers.distance >= 0).all()


def test_head_results_on_the_embedded_model(smollm2):
    """The whole measurement on two real prompts and two layers: shapes, the unpatched
    verdicts, knockout deltas that are exact zeros where the knocked-out head is absent from
    the answer's path (none here: every head moves log p), attention rows for the top heads."""
    model, tokenizer = smollm2
    prompts = _real_prompts(tokenizer, "LR", n=2)
    layers = [0, 29]
    result = head_results(
        model,
        tokenizer,
        prompts,
        layers,
        HeadSettings(knockout_layers=tuple(layers), top=2),
        RunOptions(batch_size=2, pad_id=0),
    )
    layout = HeadLayout.of(model)
    assert result.logprob_increase.shape == result.knockout_dlogp.shape == (2, 2, layout.n_heads)
    assert np.isfinite(result.logprob_increase).all() and np.isfinite(result.knockout_dlogp).all()
    assert set(np.unique(result.knockout_dcorrect)) <= {-1.0, 0.0, 1.0}
    assert (np.abs(result.knockout_dlogp) > 0).any()
    heads = {(r["layer"], r["head"]) for r in result.attention_rows}
    assert heads == set(top_heads(result.logprob_increase, layers, 2))
    assert len(result.attention_rows) == 2 * sum(p.n_examples - 1 for p in prompts)


def test_knockouts_of_chosen_layers_only_leave_the_other_layers_empty(smollm2):
    """heads.knockout_layers: the listed layer's knockout deltas are those of a run that
    knocks out every layer; the other layers' cells are NaN (not computed), never zeros
    that would read as "no effect"."""
    model, tokenizer = smollm2
    prompts = _real_prompts(tokenizer, "LR", n=2)
    layers, options = [0, 29], RunOptions(batch_size=2, pad_id=0)
    every = head_results(model, tokenizer, prompts, layers, HeadSettings(knockout_layers=(0, 29)), options)
    last = head_results(model, tokenizer, prompts, layers, HeadSettings(knockout_layers=(29,)), options)
    assert np.isnan(last.knockout_dlogp[:, 0]).all() and np.isnan(last.knockout_dcorrect[:, 0]).all()
    np.testing.assert_allclose(last.knockout_dlogp[:, 1], every.knockout_dlogp[:, 1], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(last.knockout_dcorrect[:, 1], every.knockout_dcorrect[:, 1])


def test_head_figures_with_knockouts():
    """The heatmap figures and their tables from per-head tables with knockouts (the tiny
    workflow runs without them), and the attention figure's correlations."""
    rng = np.random.default_rng(0)
    tables, attention = {}, {}
    for task in ("LR", "MD"):
        results = HeadResults(
            [0, 4],
            rng.normal(size=(5, 2, 3)),
            rng.normal(size=(5, 2, 3)),
            rng.integers(-1, 2, size=(5, 2, 3)).astype(float),
            np.ones(5, bool),
            [],
        )
        tables[task] = pd.DataFrame(head_table(results, Bootstrap(n_boot=200)))
        attention[task] = pd.DataFrame(
            [
                {
                    "prompt": p,
                    "rank": 0,
                    "layer": 4,
                    "head": 1,
                    "example": e,
                    "examples_in_prompt": 3,
                    "distance": float(3 - e),
                    "attention": 0.1 * (e + 1),
                }
                for p in range(4)
                for e in range(3)
            ]
        )
    for figure, column in (("heads_increase", "logprob_increase"), ("heads_knockout", "knockout_dlogp")):
        _, table = head_heatmap_figure(tables, figure, ("LR", "MD"), "m")
        assert len(table) == 2 * 3
        np.testing.assert_allclose(table["LR-MD"], tables["LR"][column] - tables["MD"][column])
    _, correlations = attention_figure(attention, ("LR", "MD"), "m")
    # attention grows with the example index: falls with "examples before the query" and with distance
    assert correlations["spearman_before_query"].tolist() == [-1.0, -1.0] and correlations[
        "spearman_distance"
    ].tolist() == [-1.0, -1.0]
