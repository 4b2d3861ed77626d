"""The site table (minormech.sites) and the hooks that read it, on a tiny random Llama:
every residual-stream site records what the model computes, replacements take effect at
input (pre-hook) sites as at output sites, and every stage that takes a site accepts them."""

import numpy as np
import pytest
import torch
import yaml
from conftest import random_prompts

from minormech.hooks import hook_name, record_sites, site_hooks
from minormech.models import KNOWN_MODELS, ModelManifest, resolve_model_spec
from minormech.sites import (
    HEAD_SITES,
    INPUT,
    OUTPUT,
    PAPER_SITES,
    SITE_TABLE,
    SITES,
    ModelShape,
    get_site,
    head_count,
    site_widths,
)

RESIDUAL = ["resid_pre", "resid_mid", "resid_post"]
LAYERS = [0, 1, 2]
TINY_SHAPE = ModelShape(hidden=32, heads=4, kv_heads=2, head_dim=8)

#: site -> (hook name of layer 3, module inside the decoder layer, hook kind, head split)
EXPECTED = {
    "q": ("blocks.3.attn.hook_q", "self_attn.q_proj", OUTPUT, "query"),
    "k": ("blocks.3.attn.hook_k", "self_attn.k_proj", OUTPUT, "key_value"),
    "v": ("blocks.3.attn.hook_v", "self_attn.v_proj", OUTPUT, "key_value"),
    "o": ("blocks.3.hook_attn_out", "self_attn.o_proj", OUTPUT, None),
    "mlp": ("blocks.3.hook_mlp_out", "mlp", OUTPUT, None),
    "resid_pre": ("blocks.3.hook_resid_pre", "", INPUT, None),
    "resid_mid": ("blocks.3.hook_resid_mid", "post_attention_layernorm", INPUT, None),
    "resid_post": ("blocks.3.hook_resid_post", "", OUTPUT, None),
}


def test_table_rows():
    assert SITES == tuple(EXPECTED) and PAPER_SITES == ("q", "k", "v", "o", "mlp") and HEAD_SITES == ("q", "k", "v")
    for name, (hook, module, kind, heads) in EXPECTED.items():
        site = SITE_TABLE[name]
        assert (hook_name(name, 3), site.module, site.kind, site.heads) == (hook, module, kind, heads)
    assert len({hook_name(name, 0) for name in SITES}) == len(SITES)
    with pytest.raises(KeyError, match=r"unknown site 'z'; known sites: \['q', 'k', 'v', 'o', 'mlp', 'resid_pre'"):
        get_site("z")


def test_schema_enum_is_the_table(repo_root):
    schema = yaml.safe_load((repo_root / "config" / "config.schema.yaml").read_text())
    entry = schema["properties"]["sites"]
    assert tuple(entry["items"]["enum"]) == SITES
    assert all(name in entry["description"] for name in SITES)


def test_widths_come_from_the_table():
    assert site_widths(TINY_SHAPE) == {
        "q": 32,
        "k": 16,
        "v": 16,
        "o": 32,
        "mlp": 32,
        "resid_pre": 32,
        "resid_mid": 32,
        "resid_post": 32,
    }
    assert KNOWN_MODELS["llama-3.2-3b"].site_widths == site_widths(ModelShape(3072, 24, 8, 128))
    assert (
        KNOWN_MODELS["smollm2-135m"].site_widths["resid_mid"] == 576
        and KNOWN_MODELS["smollm2-135m"].site_widths["k"] == 192
    )
    trained = resolve_model_spec(
        {
            "id": "t",
            "train": {"hidden_size": 64, "heads": 4, "kv_heads": 2, "layers": 2, "tokenizer_of": "smollm2-135m"},
        }
    )
    assert trained.site_widths == site_widths(ModelShape(64, 4, 2, 16))
    assert ModelShape.of_config({"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}) == TINY_SHAPE
    assert [head_count(s, 4, 2) for s in SITES] == [4, 2, 2, None, None, None, None, None]


def test_widths_match_the_model(tiny):
    assert ModelShape.of_config(tiny.config) == TINY_SHAPE
    with torch.no_grad(), record_sites(tiny, SITES, LAYERS) as recorded:
        tiny(torch.tensor([random_prompts(1)[0].input_ids]))
    assert {site: recorded[(site, 1)].shape[-1] for site in SITES} == site_widths(TINY_SHAPE)


def test_old_manifest_gets_the_missing_widths_from_config_json(tiny, tmp_path):
    tiny.config.save_pretrained(tmp_path)
    old = {site: width for site, width in site_widths(TINY_SHAPE).items() if site in PAPER_SITES}
    ModelManifest(id="tiny", source="path", load_from=str(tmp_path), num_layers=3, site_widths=old).write(
        tmp_path / "model.json"
    )
    assert ModelManifest.read(tmp_path / "model.json").site_widths == site_widths(TINY_SHAPE)


def test_residual_sites_are_what_the_model_computes(tiny):
    ids = torch.tensor([p.input_ids[:6] for p in random_prompts(3)])
    with torch.no_grad(), record_sites(tiny, [*RESIDUAL, "o", "mlp"], LAYERS) as recorded:
        hidden = tiny(ids, output_hidden_states=True).hidden_states
    for layer in LAYERS:
        assert torch.equal(recorded[("resid_pre", layer)], hidden[layer])
        assert torch.equal(recorded[("resid_mid", layer)], recorded[("resid_pre", layer)] + recorded[("o", layer)])
        assert torch.equal(recorded[("resid_post", layer)], recorded[("resid_mid", layer)] + recorded[("mlp", layer)])
        # output_hidden_states' last entry is after the final norm; resid_post is before it
        after = hidden[layer + 1] if layer + 1 < len(LAYERS) else None
        if after is not None:
            assert torch.equal(recorded[("resid_post", layer)], after)
    assert torch.equal(tiny.model.norm(recorded[("resid_post", 2)]), hidden[3])


@pytest.mark.parametrize("site", SITES)
def test_noop_replacement_leaves_logits_bit_identical(tiny, site):
    ids = torch.tensor([random_prompts(1)[0].input_ids])
    with torch.no_grad():
        plain = tiny(ids).logits
        with site_hooks(tiny, [site], LAYERS, lambda _s, _l, value: value.clone()):
            hooked = tiny(ids).logits
    assert torch.equal(plain, hooked)


def test_replacement_at_input_and_output_sites_takes_effect(tiny):
    ids = torch.tensor([random_prompts(1)[0].input_ids])
    block = tiny.model.layers[1]
    with torch.no_grad():
        with record_sites(tiny, ["resid_mid"], [1]) as recorded:
            tiny(ids)
        shifted = recorded[("resid_mid", 1)] + 1.0
        with (
            site_hooks(tiny, ["resid_mid"], [1], lambda _s, _l, _v: shifted),
            record_sites(tiny, ["mlp", "resid_post"], [1]) as seen,
        ):
            tiny(ids)
        assert torch.equal(seen[("mlp", 1)], block.mlp(block.post_attention_layernorm(shifted)))
        assert torch.equal(
            seen[("resid_post", 1)], shifted + seen[("mlp", 1)]
        )  # the residual add reads the replacement too
        zeros = torch.zeros_like(shifted)
        with (
            site_hooks(tiny, ["resid_post"], [0], lambda _s, _l, _v: zeros),
            record_sites(tiny, ["resid_pre"], [1]) as seen,
        ):
            tiny(ids)
        assert torch.equal(seen[("resid_pre", 1)], zeros)
        with (
            site_hooks(tiny, ["resid_pre"], [2], lambda _s, _l, _v: zeros),
            record_sites(tiny, ["resid_pre"], [2]) as seen,
        ):
            tiny(ids)  # the recording hook runs after the replacing one and sees the replacement
        assert torch.equal(seen[("resid_pre", 2)], zeros)


def test_hooks_of_both_kinds_are_removed_after_an_error(tiny):
    def fail(_s, _l, _v):
        raise RuntimeError("boom")

    modules = [module for module in tiny.modules()]
    before = [
        (list(m._forward_hooks), list(m._forward_pre_hooks)) for m in modules
    ]  # transformers keeps some of its own
    with pytest.raises(RuntimeError, match="boom"), site_hooks(tiny, list(SITES), LAYERS, fail):
        tiny(torch.tensor([[1, 2, 3]]))
    assert [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in modules] == before


def test_extraction_and_stream_take_residual_sites(tiny):
    from minormech.activations import Recording, extract_activations
    from minormech.runner import RunOptions
    from minormech.stream import StreamSource

    prompts = random_prompts(4)
    batched = extract_activations(
        tiny, prompts, Recording(RESIDUAL, LAYERS, torch.float32), RunOptions(batch_size=4, pad_id=0)
    )
    for p_index, prompt in enumerate(prompts):
        with torch.no_grad(), record_sites(tiny, RESIDUAL, LAYERS) as recorded:
            tiny.model(torch.tensor([prompt.input_ids]))
        start = sum(p.length for p in prompts[:p_index])
        for key, values in recorded.items():
            torch.testing.assert_close(batched[key][start : start + prompt.length], values[0], rtol=1e-5, atol=1e-6)
    source = StreamSource(tiny, prompts, RESIDUAL, LAYERS, site_widths(TINY_SHAPE), 4, 0, [4])
    (batch,) = list(source.read([np.arange(4)]))
    assert source.forward_prompts == 4 and source.width("resid_mid") == 32


def test_patching_at_residual_sites(tiny):
    """A patched rerun from the cached layer input equals the full patched forward, and a
    patch of the base with itself changes no logit."""
    from minormech.patching import patch_hook, patched_first_logits
    from minormech.runner import cache_below, last_logits, run_layers, unpatched_run

    base = unpatched_run(tiny, random_prompts(3, seed=1), RESIDUAL, LAYERS, 0)
    source = unpatched_run(tiny, random_prompts(3, seed=2)[::-1], RESIDUAL, LAYERS, 0)
    keep = torch.zeros(32, dtype=torch.bool)
    keep[::2] = True
    for site in RESIDUAL:
        for layer in LAYERS:
            from_layer, _ = patched_first_logits(tiny, base, source, site, layer, keep)
            with torch.no_grad(), site_hooks(tiny, [site], [layer], patch_hook(base, source, site, layer, keep, "end")):
                logits = tiny(base.input_ids, attention_mask=base.attention_mask).logits
            torch.testing.assert_close(
                from_layer, logits[torch.arange(3), base.lengths - 1].float(), rtol=1e-5, atol=1e-5
            )
            assert not torch.equal(from_layer, base.first_logits)
            noop, _ = patched_first_logits(tiny, base, base, site, layer, torch.ones(32, dtype=torch.bool))
            with torch.inference_mode():
                hidden = run_layers(
                    tiny, base.residuals[layer], layer, base.attention_mask, cache_below(tiny, base.cache, layer)
                )
                unhooked = last_logits(tiny, hidden, base.lengths)
            assert torch.equal(noop, unhooked)


def test_attribution_at_residual_sites_equals_per_site_autograd(tiny):
    from minormech.attribution import AttributionSettings, attribute_prompts, layer_gradients
    from minormech.runner import answer_prob, teacher_forced_batch

    batch = teacher_forced_batch(random_prompts(), 0)
    sites = ["k", *RESIDUAL]
    together = layer_gradients(tiny, batch, sites, LAYERS, multiply_by_inputs=False)
    assert list(together) == [(site, layer) for layer in LAYERS for site in sites]
    leaf = {}

    def make_leaf(_s, _l, value):
        leaf["a"] = value.detach().requires_grad_()
        return leaf["a"]

    for layer in LAYERS:
        for site in sites:
            with site_hooks(tiny, [site], [layer], make_leaf):
                p = answer_prob(tiny, batch)
            (expected,) = torch.autograd.grad(p.sum(), leaf["a"])
            torch.testing.assert_close(together[(site, layer)], expected, rtol=1e-4, atol=1e-7)
    alone = layer_gradients(tiny, batch, ["k"], LAYERS, multiply_by_inputs=False)
    assert all(torch.equal(alone[("k", layer)], together[("k", layer)]) for layer in LAYERS)
    settings = AttributionSettings(method="integrated_gradients", steps=4, batch_size=3)
    fa = attribute_prompts(tiny, random_prompts(), ["resid_mid"], [1], settings, 0)
    assert fa[("resid_mid", 1)].shape == (32,) and fa[("resid_mid", 1)].abs().sum() > 0


def test_only_q_k_v_have_head_slices():
    from minormech.heads import HeadLayout, head_xi

    layout = HeadLayout(n_heads=4, n_kv_heads=2, head_dim=8)
    assert [site for site in SITES if layout.heads_of(site)] == ["q", "k", "v"]
    xi = {hook_name(site, 0): torch.ones(site_widths(TINY_SHAPE)[site]) for site in SITES}
    rows = head_xi(xi, layout, [0])
    assert [(r["site"], r["head"]) for r in rows] == [("q", h) for h in range(4)] + [
        (s, h) for s in ("k", "v") for h in range(2)
    ]
