"""Attribution methods: toy functions with known attributions, and one backward pass for
every site against per-site autograd on a tiny random Llama."""

import pytest
import torch
from conftest import random_prompts as _prompts

from minormech.attribution import (
    AttributionSettings,
    NoiseDraw,
    attribute_prompts,
    layer_gradients,
    path_attribution,
    prompt_std,
    reduce_positions,
    site_function,
)
from minormech.hooks import record_sites, site_hooks
from minormech.runner import (
    RunOptions,
    answer_log_prob,
    answer_logits,
    answer_prob,
    teacher_forced_batch,
    token_log_probs,
)

SITES = ["q", "k", "v", "o", "mlp"]


def test_answer_log_prob_is_the_teacher_forced_product(tiny):
    prompts = _prompts()
    batch = teacher_forced_batch(prompts, 0)
    with torch.no_grad():
        batched = answer_log_prob(token_log_probs(answer_logits(tiny, batch), batch.answer_ids), batch.answer_mask)
    for p, value in zip(prompts, batched):
        ids = torch.tensor([p.input_ids + p.answer_ids])
        with torch.no_grad():
            log_probs = tiny(ids).logits[0].log_softmax(-1)
        expected = sum(log_probs[p.length - 1 + m, token] for m, token in enumerate(p.answer_ids))
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)


def test_one_backward_equals_per_site_autograd(tiny):
    prompts = _prompts()
    batch = teacher_forced_batch(prompts, 0)
    layers = [0, 1, 2]
    together = layer_gradients(tiny, batch, SITES, layers, multiply_by_inputs=False)
    for layer in layers:
        for site in SITES:
            leaf = {}

            def make_leaf(_s, _l, output, leaf=leaf):
                leaf["a"] = output.detach().requires_grad_()
                return leaf["a"]

            with site_hooks(tiny, [site], [layer], make_leaf):
                p = answer_prob(tiny, batch)
            (expected,) = torch.autograd.grad(p.sum(), leaf["a"])
            torch.testing.assert_close(together[(site, layer)], expected, rtol=1e-4, atol=1e-7)


def test_site_function_saliency_and_ig_completeness(tiny):
    """Saliency of g(A) = p(answer | site <- A) at the real A equals the layer gradient, and
    integrated gradients on g are complete: they sum to g(A) - g(0) per prompt."""
    prompts = _prompts(2)
    batch = teacher_forced_batch(prompts, 0)
    with torch.no_grad(), record_sites(tiny, ["k"], [1]) as recorded:
        p = answer_prob(tiny, batch)
        acts = recorded[("k", 1)]
    g = site_function(tiny, "k", 1)
    extra = (batch.input_ids, batch.attention_mask, batch.answer_positions, batch.answer_ids, batch.answer_mask)
    saliency = path_attribution(g, acts, extra, AttributionSettings(method="saliency"))
    torch.testing.assert_close(saliency, layer_gradients(tiny, batch, ["k"], [1], False)[("k", 1)])
    ig = path_attribution(g, acts, extra, AttributionSettings(method="integrated_gradients", steps=64))
    with torch.no_grad():
        p0 = g(torch.zeros_like(acts), *extra)
    torch.testing.assert_close(ig.flatten(1).sum(1), p - p0, rtol=0.05, atol=1e-6)


def test_attribute_prompts_averages_reduced_gradients(tiny):
    prompts = _prompts(3)
    fa = attribute_prompts(tiny, prompts, ["k", "mlp"], [0, 2], AttributionSettings(method="saliency", batch_size=2), 0)
    batch = teacher_forced_batch(prompts, 0)
    grads = layer_gradients(tiny, batch, ["k"], [2], False)[("k", 2)]
    expected = reduce_positions(grads, batch.prompt_lengths, "sum").mean(0)
    torch.testing.assert_close(fa[("k", 2)], expected, rtol=1e-5, atol=1e-8)
    assert fa[("mlp", 0)].shape == (32,) and fa[("k", 0)].shape == (16,)


def _linear_toy():
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    inputs = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    extra = (torch.zeros(2),)

    def g(a, _unused):
        return (a * weights).sum((1, 2))

    return g, weights, inputs, extra


@pytest.mark.parametrize(
    "method,expected",
    [
        ("saliency", lambda w, x: w.expand_as(x)),
        ("input_x_gradient", lambda w, x: x * w),
        ("smoothgrad", lambda w, x: w.expand_as(x)),
        ("integrated_gradients", lambda w, x: x * w),
        ("idgi", lambda w, x: (w**2 / (w**2).sum()) * (x * w).sum((1, 2), keepdim=True)),
    ],
)
def test_methods_on_a_linear_function(method, expected):
    """For g(A) = <W, A>: gradient W everywhere, so IG (zero baseline) = A * W, SmoothGrad = W,
    IDGI = W^2 / |W|^2 * (g(A) - g(0))."""
    g, weights, inputs, extra = _linear_toy()
    result = path_attribution(g, inputs, extra, AttributionSettings(method=method, steps=8, samples=4))
    torch.testing.assert_close(result, expected(weights, inputs))


def test_expected_gradients_on_a_linear_function():
    g, weights, inputs, extra = _linear_toy()
    baseline = torch.randn(1, 5, 4, dtype=torch.float64)
    result = path_attribution(
        g, inputs, extra, AttributionSettings(method="expected_gradients", samples=16), baselines=baseline
    )
    torch.testing.assert_close(result, (inputs - baseline) * weights)


def test_reduce_positions():
    a = torch.tensor([[[1.0], [-2.0], [4.0]], [[3.0], [5.0], [100.0]]])  # [B=2, S=3, d=1]
    lengths = torch.tensor([3, 2])
    assert reduce_positions(a, lengths, "sum")[:, 0].tolist() == [3.0, 8.0]
    assert reduce_positions(a, lengths, "mean")[:, 0].tolist() == [1.0, 4.0]
    assert reduce_positions(a, lengths, "abs_sum")[:, 0].tolist() == [7.0, 8.0]
    assert reduce_positions(a, lengths, "last")[:, 0].tolist() == [4.0, 5.0]


@pytest.mark.parametrize(
    "method", ["smoothgrad", "integrated_gradients", "expected_gradients", "idgi", "input_x_gradient"]
)
def test_every_method_runs_on_a_model(tiny, tmp_path, method):
    """Each configured method yields one finite, deterministic [d] vector per (site, layer);
    expected gradients take their baselines from real shards of two tasks."""
    import numpy as np

    from minormech.activations import Recording, extract_activations
    from minormech.attribution import baseline_pool
    from minormech.prompts import prompts_digest
    from minormech.shards import Shard, ShardHeader, write_shard

    shards = {}
    for task, seed in (("LR", 5), ("MD", 6)):
        prompts = _prompts(3, seed)
        acts = extract_activations(tiny, prompts, Recording(["k", "o"], [0, 2], torch.float32), RunOptions(2, 0))
        path = tmp_path / f"{task}.safetensors"
        write_shard(
            path,
            ShardHeader("tiny", task, "probe_test", 0, ("k", "o"), (0, 2), "float32", prompts_digest(prompts)),
            acts,
            [p.id for p in prompts],
            [p.length for p in prompts],
        )
        shards[task] = [Shard(path)]
    pool = baseline_pool(shards, ["k", "o"], [0, 2], 2, np.random.default_rng(0))
    assert pool[("k", 0)][0].shape[0] == 4
    settings = AttributionSettings(method=method, batch_size=2, steps=4, samples=3)
    first = attribute_prompts(tiny, _prompts(3), ["k", "o"], [0, 2], settings, 0, pool)
    second = attribute_prompts(tiny, _prompts(3), ["k", "o"], [0, 2], settings, 0, pool)
    assert set(first) == {("k", 0), ("k", 2), ("o", 0), ("o", 2)}
    assert first[("k", 2)].shape == (16,) and first[("o", 0)].shape == (32,)
    for key in first:
        assert torch.isfinite(first[key]).all() and first[key].abs().sum() > 0
        if method != "expected_gradients":  # GradientShap draws from torch's global RNG
            torch.testing.assert_close(first[key], second[key])


def test_smoothgrad_noise_scale_is_the_std_of_the_prompts_own_positions():
    """Padding and fed answer tokens are not part of std(A): a prompt padded with zeros has
    the std of its unpadded positions."""
    rows = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(0))
    rows[0, 4:] = 0.0  # prompt 0 has 4 positions of its own
    std = prompt_std(rows, torch.tensor([4, 6]))
    torch.testing.assert_close(std.flatten(), torch.stack([rows[0, :4].std(), rows[1].std()]))


def test_smoothgrad_draws_its_own_noise_per_batch_site_and_layer():
    settings = AttributionSettings(method="smoothgrad", seed=7)

    def seed(options, b, site, layer):
        return NoiseDraw.of(options, b, site, layer, torch.tensor([3])).seed

    seeds = {seed(settings, b, site, layer) for b in (0, 1) for site in ("k", "v") for layer in (0, 1)}
    assert len(seeds) == 8 and seed(settings, 0, "k", 0) == seed(settings, 0, "k", 0)
    assert seed(AttributionSettings(seed=8), 0, "k", 0) != seed(settings, 0, "k", 0)
