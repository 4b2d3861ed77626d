"""Activation patching on a tiny random Llama (exact equivalences, the settings' logic) and
its controls on the real embedded model."""

import torch
from conftest import random_prompts

from minormech.activations import pad_token_id
from minormech.hooks import record_sites, site_hooks
from minormech.patching import (
    BASIC,
    PATCH_KINDS,
    SWAPPED,
    PatchingSettings,
    aligned_source_index,
    compare,
    patch_hook,
    patched_first_logits,
    patching_counts,
    random_keep_mask,
    same_prediction,
    settings_for,
)
from minormech.prompts import generate_prompts, prompt_weight_ids
from minormech.runner import RunOptions, cache_below, greedy_continue, score_answer, unpatched_run
from minormech.tasks import get_task, make_weight_table
from minormech.uncertainty import Bootstrap

SITES, LAYERS = ["q", "k", "v", "o", "mlp"], [0, 1, 2]


def _runs(tiny, seed_base=1, seed_source=2, n=3):
    base = unpatched_run(tiny, random_prompts(n, seed_base), SITES, LAYERS, 0)
    source = unpatched_run(tiny, random_prompts(n, seed_source)[::-1], SITES, LAYERS, 0)
    return base, source


def _patched_greedy(model, base, source, site, layer, keep, n_tokens):
    """The patched base's greedy prediction, decoded on a copy of its cache; and the pass."""
    first, cache = patched_first_logits(model, base, source, site, layer, keep)
    return (
        greedy_continue(
            model,
            first,
            cache_below(model, cache, len(model.model.layers)),
            base.attention_mask,
            base.lengths,
            n_tokens,
        ).cpu(),
        first,
        cache,
    )


def _half(width, seed=0):
    keep = torch.zeros(width, dtype=torch.bool)
    keep[torch.randperm(width, generator=torch.Generator().manual_seed(seed))[: width // 2]] = True
    return keep


def test_run_from_cached_layer_input_equals_full_patched_forward(tiny):
    base, source = _runs(tiny)
    for site in SITES:
        for layer in LAYERS:
            keep = _half(base.sites[(site, layer)].shape[-1])
            from_layer, _ = patched_first_logits(tiny, base, source, site, layer, keep)
            with torch.no_grad(), site_hooks(tiny, [site], [layer], patch_hook(base, source, site, layer, keep, "end")):
                logits = tiny(base.input_ids, attention_mask=base.attention_mask).logits
            full = logits[torch.arange(3), base.lengths - 1].float()
            torch.testing.assert_close(from_layer, full, rtol=1e-5, atol=1e-5)


def test_cached_decoding_equals_decoding_with_full_forwards(tiny):
    """Greedy decoding from the layer's cached input with the KV cache gives the tokens that
    rerunning the whole growing sequence gives, the prompt's positions patched each time."""
    base, source = _runs(tiny)
    site, layer = "v", 1
    keep = _half(16)
    cached, _, _ = _patched_greedy(tiny, base, source, site, layer, keep, n_tokens=3)
    with (
        torch.no_grad(),
        site_hooks(tiny, [site], [layer], patch_hook(base, source, site, layer, keep, "end")),
        record_sites(tiny, [site], [layer]) as seen,
    ):
        tiny(base.input_ids, attention_mask=base.attention_mask)
    patched_values = seen[(site, layer)]
    for row, prompt in enumerate(base.prompts):
        n = prompt.length

        def on_sequence(_s, _l, out, row=row, n=n):
            out = out.clone()
            out[0, :n] = patched_values[row, :n]
            return out

        sequence = list(prompt.input_ids)
        for step in range(3):
            with torch.no_grad(), site_hooks(tiny, [site], [layer], on_sequence):
                token = tiny(torch.tensor([sequence])).logits[0, -1].argmax().item()
            assert token == cached[row, step].item(), (row, step)
            sequence.append(token)


def test_patching_with_source_equal_to_base_changes_nothing(tiny):
    base, _ = _runs(tiny)
    for site in SITES:
        for layer in LAYERS:
            keep = torch.ones(base.sites[(site, layer)].shape[-1], dtype=torch.bool)
            patched, _, _ = _patched_greedy(tiny, base, base, site, layer, keep, base.prediction.shape[1])
            assert torch.equal(patched, base.prediction)


def test_patching_all_features_copies_the_source_activations(tiny):
    base, source = _runs(tiny)
    site, layer = "k", 1
    keep = torch.ones(16, dtype=torch.bool)
    index, valid = aligned_source_index(base.lengths, source.lengths, base.input_ids.shape[1], "end")
    with (
        torch.no_grad(),
        site_hooks(tiny, [site], [layer], patch_hook(base, source, site, layer, keep, "end")),
        record_sites(tiny, [site], [layer]) as seen,
    ):
        tiny(base.input_ids, attention_mask=base.attention_mask)
    for row in range(3):
        positions = valid[row].nonzero()[:, 0]
        torch.testing.assert_close(
            seen[(site, layer)][row, positions], source.sites[(site, layer)][row, index[row, positions]]
        )
        assert len(positions) == min(base.lengths[row], source.lengths[row])  # end-aligned over the shorter prompt


def test_end_and_left_alignment():
    index, valid = aligned_source_index(torch.tensor([5]), torch.tensor([3]), 6, "end")
    assert valid[0].tolist() == [False, False, True, True, True, False]
    assert index[0, 2:5].tolist() == [0, 1, 2]
    index, valid = aligned_source_index(torch.tensor([5]), torch.tensor([3]), 6, "left")
    assert valid[0].tolist() == [True, True, True, False, False, False] and index[0, :3].tolist() == [0, 1, 2]


def test_basic_and_swapped_differ_when_u_is_tau1(tiny):
    pair = ["LR", "MD"]
    reference = {"LR": random_prompts(4, 11), "MD": random_prompts(4, 12)}
    others = {"LR": random_prompts(4, 13), "MD": random_prompts(4, 14)}
    keep = {
        (t, s, layer): _half(tiny.model.layers[layer].self_attn.k_proj.out_features if s in "kv" else 32, seed=layer)
        for t in pair
        for s in ["k"]
        for layer in LAYERS
    }
    result = patching_counts(
        tiny, reference, others, keep, PatchingSettings(pair, ["k"], LAYERS), RunOptions(batch_size=2, pad_id=0)
    )
    rows, accuracy = result.rows, result.accuracy
    assert len(settings_for(pair)) == 8 and len(rows) == 8 * len(LAYERS) and {r["patch"] for r in rows} == {"xi"}
    rho = {(r["tau1"], r["u"], r["v"], r["layer"]): r["rho"] for r in rows}
    for tau1 in pair:
        assert any(rho[(tau1, tau1, BASIC, layer)] != rho[(tau1, tau1, SWAPPED, layer)] for layer in LAYERS)
    assert all(0 <= r["rho"] <= 4 and r["fraction"] == r["rho"] / 4 for r in rows)
    assert set(accuracy) == {("reference", "LR"), ("reference", "MD"), ("patching", "LR"), ("patching", "MD")}
    assert result.runs == {"unpatched": 2 * 4, "xi": 2 * 8 * len(LAYERS)}


def test_bfloat16_path_runs_on_cpu(tiny):
    """The GPU configs compute in bfloat16: the same code (extraction, patching from a
    layer's cached input) runs in bfloat16 here, within bfloat16 precision of a full forward."""
    import copy

    from minormech.activations import Recording, extract_activations

    model = copy.deepcopy(tiny).to(torch.bfloat16)
    prompts = random_prompts(3)
    stored = extract_activations(model, prompts, Recording(["k", "mlp"], [1], torch.bfloat16), RunOptions(2, 0))
    assert stored[("k", 1)].dtype == torch.bfloat16 and torch.isfinite(stored[("k", 1)].float()).all()
    base = unpatched_run(model, prompts, ["k"], [1], 0)
    source = unpatched_run(model, random_prompts(3, 2), ["k"], [1], 0)
    keep = _half(16)
    from_layer, _ = patched_first_logits(model, base, source, "k", 1, keep)
    with torch.no_grad(), site_hooks(model, ["k"], [1], patch_hook(base, source, "k", 1, keep, "end")):
        full = (
            model(base.input_ids, attention_mask=base.attention_mask).logits[torch.arange(3), base.lengths - 1].float()
        )
    torch.testing.assert_close(from_layer, full, rtol=2e-2, atol=2e-2)


def test_teacher_forced_agreement_equals_comparing_a_greedy_decode(tiny):
    """rho's comparison is read off the teacher-forced decode of r_NP: it must say True
    exactly for the rows whose greedy decode of the patched base reproduces r_NP."""
    base, source = _runs(tiny)
    outcomes = []
    for site in SITES:
        for layer in LAYERS:
            keep = _half(base.sites[(site, layer)].shape[-1], seed=layer)
            greedy, first, cache = _patched_greedy(tiny, base, source, site, layer, keep, base.prediction.shape[1])
            score = score_answer(tiny, base, first, cache, base.prediction, base.answer_lengths)
            expected = same_prediction(greedy, base.prediction, base.answer_lengths)
            assert torch.equal(score.same, expected), (site, layer)
            outcomes += expected.tolist()
    assert any(outcomes) and not all(outcomes)


def test_score_answer_equals_full_forwards_over_prompt_and_answer(tiny):
    """Teacher forcing through the prompt's cache (right padding, answers of 1-3 tokens)
    gives the log probability and logit difference that a forward over prompt + answer
    gives, and leaves the prompt-only cache as it was (a second call gives the same)."""
    base, _ = _runs(tiny)
    answer = torch.randint(1, 50, base.prediction.shape, generator=torch.Generator().manual_seed(5))
    lengths = base.answer_lengths
    score = score_answer(tiny, base, base.first_logits, base.cache, answer, lengths)
    again = score_answer(tiny, base, base.first_logits, base.cache, answer, lengths)
    assert torch.equal(score.logp, again.logp) and torch.equal(score.logit_diff, again.logit_diff)
    logp, logit_diff = score.logp, score.logit_diff
    for row, prompt in enumerate(base.prompts):
        n, k = prompt.length, int(lengths[row])
        with torch.no_grad():
            logits = tiny(torch.tensor([list(prompt.input_ids) + answer[row, :k].tolist()])).logits[0].float()
        expected = logits[n - 1 : n - 1 + k].log_softmax(-1).gather(1, answer[row, :k, None]).sum()
        torch.testing.assert_close(logp[row], expected, rtol=1e-5, atol=1e-5)
        first = logits[n - 1]
        others = torch.cat([first[: answer[row, 0]], first[answer[row, 0] + 1 :]])
        torch.testing.assert_close(logit_diff[row], first[answer[row, 0]] - others.max(), rtol=1e-5, atol=1e-5)


def _real_prompts(tokenizer, task_name, n, max_tokens, seed=0):
    task = get_task(task_name)
    table = make_weight_table(task, 40, 0)
    return generate_prompts(
        task, table, prompt_weight_ids("probe_train", table, seed, count=n), "probe_train", tokenizer, max_tokens, seed
    )


def test_noop_patch_changes_nothing_on_the_real_model(smollm2):
    """Patching the base with its own activations (the noop control) through the whole
    machinery (cached layer input, patch hook, greedy and teacher-forced decodes) keeps
    every prediction and gives dlogp = dlogit = 0: the control measures nothing but rounding."""
    model, tokenizer = smollm2
    prompts = _real_prompts(tokenizer, "LR", 2, 25)  # 44 and 45 tokens (padding), answers of 2 and 3 tokens
    assert len({p.length for p in prompts}) > 1 and min(len(p.answer_ids) for p in prompts) > 1
    layers = [12, 26]
    base = unpatched_run(model, prompts, ["mlp"], layers, pad_token_id(tokenizer))
    unpatched = score_answer(model, base, base.first_logits, base.cache, base.prediction, base.answer_lengths)
    for layer in layers:
        keep = _half(576, seed=layer)
        greedy, first, cache = _patched_greedy(model, base, base, "mlp", layer, keep, base.prediction.shape[1])
        assert torch.equal(greedy, base.prediction)
        outcome = compare(model, base, first, cache, base, unpatched, int(keep.sum()))
        assert outcome.same.all()
        assert outcome.dlogp.abs().max() <= 1e-5 and outcome.dlogit.abs().max() <= 1e-5, (layer, outcome)


def test_random_mask_matches_the_xi_count_and_is_seeded():
    xi = torch.zeros(576, dtype=torch.bool)
    xi[:288] = True
    mask = random_keep_mask(xi, 0, "LR", "k", 5)
    assert mask.dtype == torch.bool and mask.shape == xi.shape and int(mask.sum()) == int(xi.sum())
    assert torch.equal(mask, random_keep_mask(xi, 0, "LR", "k", 5))
    assert not torch.equal(mask, xi)
    assert not torch.equal(mask, random_keep_mask(xi, 0, "LR", "k", 6)) and not torch.equal(
        mask, random_keep_mask(xi, 1, "LR", "k", 5)
    )


COLUMNS = [
    "setting",
    "tau1",
    "u",
    "v",
    "site",
    "layer",
    "patch",
    "n_kept",
    "rho",
    "rho_ci_low",
    "rho_ci_high",
    "n_pairs",
    "fraction",
    "dlogp",
    "dlogp_ci_low",
    "dlogp_ci_high",
    "dlogit",
    "dlogit_ci_low",
    "dlogit_ci_high",
]


def test_patching_counts_with_controls(tiny):
    """Rows for xi, random and noop with rho, dlogp and dlogit and their intervals; per-pair
    rows that add up to them; the noop patch changes no score, and no prediction of a B
    setting (base = reference); the noop passes run once per base set."""
    pair, layers = ["LR", "MD"], [0, 2]
    reference = {"LR": random_prompts(2, 11), "MD": random_prompts(2, 12)}
    others = {"LR": random_prompts(2, 13), "MD": random_prompts(2, 14)}
    keep = {(t, "k", layer): _half(16, seed=layer + 3 * i) for i, t in enumerate(pair) for layer in layers}
    settings = PatchingSettings(pair, ["k"], layers, controls=True, seed=0, bootstrap=Bootstrap(n_boot=200))
    result = patching_counts(tiny, reference, others, keep, settings, RunOptions(batch_size=2, pad_id=0))
    rows = result.rows
    assert all(list(r) == COLUMNS for r in rows)
    assert len(rows) == 8 * len(layers) * 3 and {r["patch"] for r in rows} == set(PATCH_KINDS)
    assert result.runs == {"unpatched": 4, "xi": 8 * len(layers), "random": 8 * len(layers), "noop": 4 * len(layers)}
    by_key = {(r["setting"], r["layer"], r["patch"]): r for r in rows}
    for r in rows:
        assert (
            r["n_pairs"] == 2
            and r["rho_ci_low"] <= r["rho"] <= r["rho_ci_high"]
            and r["dlogp_ci_low"] <= r["dlogp"] <= r["dlogp_ci_high"]
        )
        assert r["n_kept"] == by_key[(r["setting"], r["layer"], "xi")]["n_kept"] == 8
        pairs = [
            p for p in result.pairs if (p["setting"], p["layer"], p["patch"]) == (r["setting"], r["layer"], r["patch"])
        ]
        assert [p["pair"] for p in pairs] == [0, 1] and sum(p["same"] for p in pairs) == r["rho"]
        assert abs(sum(p["dlogit"] for p in pairs) / 2 - r["dlogit"]) < 1e-9
        if r["patch"] == "noop":
            assert abs(r["dlogp"]) < 1e-5 and abs(r["dlogit"]) < 1e-5
            assert r["rho"] == 2 or r["v"] == SWAPPED
    assert any(by_key[(r["setting"], r["layer"], "random")]["dlogp"] != r["dlogp"] for r in rows if r["patch"] == "xi")


def test_noop_rows_carry_their_own_settings_feature_count(tiny):
    """The noop pass runs once per base set, but each row reports its own setting's xi
    feature count, which differs between the two tau1 of a pair here (8 and 5 of 16)."""
    pair, layers = ["LR", "MD"], [1]
    reference = {"LR": random_prompts(2, 11), "MD": random_prompts(2, 12)}
    others = {"LR": random_prompts(2, 13), "MD": random_prompts(2, 14)}
    fewer = torch.zeros(16, dtype=torch.bool)
    fewer[:5] = True
    keep = {("LR", "k", 1): _half(16, seed=1), ("MD", "k", 1): fewer}
    settings = PatchingSettings(pair, ["k"], layers, controls=True, seed=0, bootstrap=Bootstrap(n_boot=50))
    rows = patching_counts(tiny, reference, others, keep, settings, RunOptions(batch_size=2, pad_id=0)).rows
    xi = {(r["setting"], r["layer"]): r["n_kept"] for r in rows if r["patch"] == "xi"}
    assert set(xi.values()) == {8, 5}
    for r in rows:
        assert r["n_kept"] == xi[(r["setting"], r["layer"])], r
