"""Activation recording on the real embedded model."""

import torch

from minormech.activations import Recording, extract_activations, pad_token_id
from minormech.hooks import record_sites
from minormech.prompts import generate_prompts, prompt_weight_ids
from minormech.runner import RunOptions
from minormech.tasks import get_task, make_weight_table


def _prompts(tokenizer, n=3, max_tokens=50):
    task = get_task("MD")
    table = make_weight_table(task, 40, 0)
    ids = prompt_weight_ids("probe_train", table, 0, count=n)
    return generate_prompts(task, table, ids, "probe_train", tokenizer, max_tokens, 0)


def test_batched_extraction_equals_one_prompt_at_a_time(smollm2):
    model, tokenizer = smollm2
    prompts = _prompts(tokenizer, n=3)
    prompts[1] = _prompts(tokenizer, n=2, max_tokens=25)[1]  # a shorter prompt: padding in the batch
    assert len({p.length for p in prompts}) > 1
    sites, layers = ["q", "k", "v", "o", "mlp"], [0, 29]
    batched = extract_activations(
        model, prompts, Recording(sites, layers, torch.float32), RunOptions(3, pad_token_id(tokenizer))
    )
    single = extract_activations(
        model, prompts, Recording(sites, layers, torch.float32), RunOptions(1, pad_token_id(tokenizer))
    )
    widths = {"q": 576, "k": 192, "v": 192, "o": 576, "mlp": 576}
    for (site, layer), values in batched.items():
        assert values.shape == (sum(p.length for p in prompts), widths[site])
        # float32 sums of a batch of 3 and of 1 differ in their last bits, and 30 layers add
        # them up: on one machine 1 value of 101952 differed by 2.3e-4 at layer 29. A padding
        # or masking error moves values by far more than the tolerance.
        torch.testing.assert_close(values, single[(site, layer)], rtol=1e-3, atol=1e-3)


def test_sites_are_the_module_outputs_before_rope(smollm2):
    """k at layer i = k_proj(input_layernorm(residual entering layer i)), no rotary embedding;
    mlp = the MLP output, which added to the post-attention residual gives the next residual."""
    model, tokenizer = smollm2
    prompt = _prompts(tokenizer, n=1)[0]
    ids = torch.tensor([prompt.input_ids])
    layer = 4
    with torch.no_grad(), record_sites(model, ["k", "o", "mlp"], [layer]) as recorded:
        hidden = model(ids, output_hidden_states=True, use_cache=False).hidden_states
        block = model.model.layers[layer]
        expected_k = block.self_attn.k_proj(block.input_layernorm(hidden[layer]))
        torch.testing.assert_close(recorded[("k", layer)], expected_k)
        after_attention = hidden[layer] + recorded[("o", layer)]
        torch.testing.assert_close(after_attention + recorded[("mlp", layer)], hidden[layer + 1], rtol=1e-4, atol=1e-4)
