"""Activation patching on a tiny random Llama: exact equivalences and the settings' logic."""
import torch
from conftest import random_prompts

from minormech.hooks import record_sites, site_hooks
from minormech.patching import (
    BASIC, SWAPPED, aligned_source_index, patch_hook, patched_first_logits, patched_prediction, patching_counts, settings_for, unpatched_run,
)

SITES, LAYERS = ["q", "k", "v", "o", "mlp"], [0, 1, 2]


def _runs(tiny, seed_base=1, seed_source=2, n=3):
    base = unpatched_run(tiny, random_prompts(n, seed_base), SITES, LAYERS, 0)
    source = unpatched_run(tiny, random_prompts(n, seed_source)[::-1], SITES, LAYERS, 0)
    return base, source


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
    cached = patched_prediction(tiny, base, source, site, layer, keep, n_tokens=3)
    with torch.no_grad(), site_hooks(tiny, [site], [layer], patch_hook(base, source, site, layer, keep, "end")), record_sites(tiny, [site], [layer]) as seen:
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
            patched = patched_prediction(tiny, base, base, site, layer, keep, base.prediction.shape[1])
            assert torch.equal(patched, base.prediction)


def test_patching_all_features_copies_the_source_activations(tiny):
    base, source = _runs(tiny)
    site, layer = "k", 1
    keep = torch.ones(16, dtype=torch.bool)
    index, valid = aligned_source_index(base.lengths, source.lengths, base.input_ids.shape[1], "end")
    with torch.no_grad(), site_hooks(tiny, [site], [layer], patch_hook(base, source, site, layer, keep, "end")), record_sites(tiny, [site], [layer]) as seen:
        tiny(base.input_ids, attention_mask=base.attention_mask)
    for row in range(3):
        positions = valid[row].nonzero()[:, 0]
        torch.testing.assert_close(seen[(site, layer)][row, positions], source.sites[(site, layer)][row, index[row, positions]])
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
    keep = {(t, s, l): _half(tiny.model.layers[l].self_attn.k_proj.out_features if s in "kv" else 32, seed=l) for t in pair for s in ["k"] for l in LAYERS}
    rows, accuracy, passes = patching_counts(tiny, reference, others, pair, ["k"], LAYERS, keep, batch_size=2, pad_id=0)
    assert len(settings_for(pair)) == 8 and len(rows) == 8 * len(LAYERS)
    rho = {(r["tau1"], r["u"], r["v"], r["layer"]): r["rho"] for r in rows}
    for tau1 in pair:
        assert any(rho[(tau1, tau1, BASIC, l)] != rho[(tau1, tau1, SWAPPED, l)] for l in LAYERS)
    assert all(0 <= r["rho"] <= 4 and r["fraction"] == r["rho"] / 4 for r in rows)
    assert set(accuracy) == {"reference:LR", "reference:MD", "patching:LR", "patching:MD"}
    assert passes == 2 * (4 + 8 * len(LAYERS))


def test_bfloat16_path_runs_on_cpu(tiny):
    """The GPU configs compute in bfloat16: the same code (extraction, patching from a
    layer's cached input) runs in bfloat16 here, within bfloat16 precision of a full forward."""
    import copy

    from minormech.activations import extract_activations

    model = copy.deepcopy(tiny).to(torch.bfloat16)
    prompts = random_prompts(3)
    stored = extract_activations(model, prompts, ["k", "mlp"], [1], 2, torch.bfloat16, 0)
    assert stored[("k", 1)].dtype == torch.bfloat16 and torch.isfinite(stored[("k", 1)].float()).all()
    base = unpatched_run(model, prompts, ["k"], [1], 0)
    source = unpatched_run(model, random_prompts(3, 2), ["k"], [1], 0)
    keep = _half(16)
    from_layer, _ = patched_first_logits(model, base, source, "k", 1, keep)
    with torch.no_grad(), site_hooks(model, ["k"], [1], patch_hook(base, source, "k", 1, keep, "end")):
        full = model(base.input_ids, attention_mask=base.attention_mask).logits[torch.arange(3), base.lengths - 1].float()
    torch.testing.assert_close(from_layer, full, rtol=2e-2, atol=2e-2)
