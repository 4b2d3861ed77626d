"""The prepared GPU check: one command that runs the pipeline's heavy stages on
Llama-3.2-3B's exact architecture (random weights, the Llama 3 tokenizer) in bfloat16 and
prints one table. Whenever a GPU is at hand, this is what runs first; its table goes into
docs/PERFORMANCE.md.

    benchmarks/gpu-check                      # one GPU, bfloat16, about 8 minutes at most
    benchmarks/gpu-check --device cpu --tiny  # the same code on a tiny model (the test suite runs it)

Stages: caching every (site, layer) of the five paper sites; one stream-mode training pass
against plain forwards; stacked probes against one probe trained alone (site k, every
layer); saliency attribution against a forward; and the no-op patch in the model's dtype,
which must leave the logits bit-identical to the unpatched rerun from the same layer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig

from benchmarks.common import stopwatch
from benchmarks.stages import attribution_cost, probe_stacking, stream_cost
from minormech.activations import Recording, extract_activations, pad_token_id
from minormech.models import architecture_config, resolve_device
from minormech.patching import patched_first_logits
from minormech.prompts import generate_prompts, prompt_weight_ids
from minormech.random_init import random_model
from minormech.runner import RunOptions, rerun_from, unpatched_run
from minormech.sites import PAPER_SITES, ModelShape, site_widths
from minormech.tasks import get_task, make_weight_table
from minormech.tokenizers import load_named_tokenizer

#: The tiny stand-in: Llama 3's vocabulary, rotary scaling and grouped-query layout, small widths.
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY.update(num_key_value_heads=2, head_dim=16)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer stand-in of the architecture")
    parser.add_argument("--prompts", type=int, default=16, help="LR prompts per stage (default 16)")
    parser.add_argument("--max-prompt-tokens", type=int, default=600, help="example-token budget (paper 600)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace):
    """(model, tokenizer, config) of llama-3.2-3b-shaped, or its tiny stand-in, on the device."""
    config = LlamaConfig(**{**architecture_config("llama-3.2-3b"), **(TINY if args.tiny else {})})
    model = random_model(config, seed=0, dtype=getattr(torch, args.dtype), device=resolve_device(args.device))
    return model.eval().requires_grad_(False), load_named_tokenizer("llama3"), config


def llama3_prompts(tokenizer, count: int, max_prompt_tokens: int, prompt_set: str):
    task = get_task("LR")
    table = make_weight_table(task, 40, 0)
    ids = prompt_weight_ids(prompt_set, table, 0, count) if prompt_set != "probe_test" else table.test_ids[:count]
    return generate_prompts(task, table, ids, prompt_set, tokenizer, max_prompt_tokens, 0)


def noop_patch(model, prompts, pad_id: int, layer: int) -> dict:
    """Patching the base with its own activations (the no-op control) in the model's dtype:
    the logits must equal the unpatched rerun from the same layer bit for bit; the full
    forward's logits are reported beside them."""
    base = unpatched_run(model, prompts, ["k"], [layer], pad_id)
    keep = torch.ones(base.sites[("k", layer)].shape[-1], dtype=torch.bool)
    patched, _ = patched_first_logits(model, base, base, "k", layer, keep)
    rerun, _ = rerun_from(model, base, layer)
    return {
        "layer": layer,
        "identical_to_rerun": bool(torch.equal(patched, rerun)),
        "max_abs_vs_forward": float((patched - base.first_logits).abs().max()),
    }


def main(argv: list[str]) -> int:
    args = parse(argv)
    start = time.perf_counter()
    with stopwatch(resolve_device(args.device)) as drawn:
        model, tokenizer, config = build(args)
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    prompts = llama3_prompts(tokenizer, args.prompts, args.max_prompt_tokens, "probe_train")
    test_prompts = llama3_prompts(tokenizer, min(args.prompts, 40), args.max_prompt_tokens, "probe_test")
    layers = list(range(config.num_hidden_layers))
    widths = site_widths(ModelShape.of_config(config.to_dict()))
    tokens = sum(p.length for p in prompts)
    rows = [("draw", drawn["seconds"], f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters")]
    recording = Recording(PAPER_SITES, layers, getattr(torch, args.dtype))
    with stopwatch(device) as cached:
        activations = extract_activations(model, prompts, recording, RunOptions(8, pad))
    size = sum(t.numel() * t.element_size() for t in activations.values()) / 1e9
    rows.append(("caching", cached["seconds"], f"{tokens / cached['seconds']:.0f} tokens/s, {size:.2f} GB"))
    del activations

    def log(line: str) -> None:
        print(f"  {line}", file=sys.stderr)

    for row in stream_cost(model, pad, prompts, [PAPER_SITES], widths, 8, 512, 1, log):
        rows.append((f"stream (probe batch {row['probe_batch']})", row["stream_s"], f"{row['ratio']:.2f}x forwards"))
    with tempfile.TemporaryDirectory() as work:
        steps = len(prompts)
        for row in probe_stacking(model, pad, prompts, test_prompts, ["k"], Path(work), steps, 512, 8, 1, log):
            speedup, difference = row["speedup"], row["max_rel_mse_diff"]
            note = f"{row['probes']} probes, {speedup:.1f}x one at a time, MSE rel. diff {difference:.1e}"
            rows.append(("stacked probes (k)", row["stacked_s"], note))
    for row in attribution_cost(model, pad, prompts[:8], PAPER_SITES, 4, 1, ["saliency"]):
        seconds = row["attribution_s_per_prompt"] * row["prompts"]
        rows.append(("attribution (saliency)", seconds, f"{row['ratio']:.1f}x a forward"))
    noop = noop_patch(model, prompts[:4], pad, layers[len(layers) // 2])
    rows.append(("no-op patch", float("nan"), f"{noop}"))
    name = f"{'tiny ' if args.tiny else ''}llama-3.2-3b-shaped"
    print(f"gpu-check: {name}, {args.dtype} on {device}, {len(prompts)} prompts")
    print(f"{'stage':<28} {'seconds':>9}  measure")
    for stage, seconds, note in rows:
        print(f"{stage:<28} {seconds:>9.2f}  {note}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0 if noop["identical_to_rerun"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
