"""Run prompts through a model once and keep every configured site's activations.

The activations A of each site (paper §2.1, eq. 2-5) at every prompt position are what the
probes of §4.1 and the feature differences of §4.2.2 read. One forward pass per batch
(minormech.runner's batches and right padding) records all (site, layer) pairs at every
token position.
Batches are right-padded, so the default position ids (0..n-1) are right for every
prompt; padded positions are dropped before anything is stored. Only the decoder
stack runs (``model.model``): the vocabulary projection is not needed for activations
and costs about a fifth of SmolLM2-135M's forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from minormech.hooks import site_hooks
from minormech.prompts import Prompt
from minormech.runner import RunOptions, batched, right_padded


def pad_token_id(tokenizer) -> int:
    """The id to right-pad with: any id works (padded positions are masked and never
    stored), so the tokenizer's pad token, else its end-of-sequence token, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


@dataclass(frozen=True)
class Recording:
    """What a caching pass records: these sites of these layers, stored in `store_dtype`."""

    sites: Sequence[str]
    layers: Sequence[int]
    store_dtype: torch.dtype


@torch.inference_mode()
def extract_stacked(
    model, prompts: Sequence[Prompt], recording: Recording, run: RunOptions, on_device: bool = False
) -> dict[str, torch.Tensor]:
    """activations[site] = [layers, sum of prompt lengths, width], in prompt order; on the
    CPU, or on the model's device with `on_device` (stream mode hands them to probes there).

    The hook copies each site's unpadded rows straight into a preallocated buffer, so no
    site's output stays alive on the device for longer than its own layer. On a GPU the
    host buffers are pinned and the copies asynchronous: the rows to keep are found once
    per batch (one host sync), each hook queues its gather, cast and device-to-host copy
    behind the layer's compute, and the batch ends with one synchronize.
    """
    sites, layers, store_dtype = recording.sites, recording.layers, recording.store_dtype
    device = next(model.parameters()).device
    pinned = device.type == "cuda" and not on_device
    total = sum(p.length for p in prompts)
    layer_slot = {layer: i for i, layer in enumerate(layers)}
    buffers: dict[str, torch.Tensor] = {}
    cursor = {"start": 0, "rows": None}

    def store(site: str, layer: int, output: torch.Tensor) -> None:
        rows = output.flatten(0, 1).index_select(0, cursor["rows"]).to(store_dtype)
        if site not in buffers:
            buffers[site] = torch.empty(
                (len(layers), total, output.shape[-1]),
                dtype=store_dtype,
                device=device if on_device else "cpu",
                pin_memory=pinned,
            )
        buffers[site][layer_slot[layer], cursor["start"] : cursor["start"] + rows.shape[0]].copy_(
            rows, non_blocking=pinned
        )

    batches = batched(prompts, run.batch_size)
    with site_hooks(model, sites, layers, store):
        for batch in run.progress(batches, len(batches)):
            ids, mask = right_padded([p.input_ids for p in batch], run.pad_id, device)
            cursor["rows"] = mask.flatten().nonzero().squeeze(1)  # row-major: prompt by prompt, position by position
            model.model(input_ids=ids, attention_mask=mask, use_cache=False)
            cursor["start"] += int(cursor["rows"].numel())
    if pinned:
        torch.cuda.synchronize(device)
    return buffers


def extract_activations(
    model, prompts: Sequence[Prompt], recording: Recording, run: RunOptions
) -> dict[tuple[str, int], torch.Tensor]:
    """activations[(site, layer)] = [sum of prompt lengths, width] on the CPU, in prompt
    order: what a shard holds (views into the buffers of extract_stacked)."""
    stacked = extract_stacked(model, prompts, recording, run)
    return {(site, layer): stacked[site][i] for site in recording.sites for i, layer in enumerate(recording.layers)}
