"""In-process timings of the pipeline's own stages, each a ratio inside one run:
stacked probes vs one at a time, a stream-mode training pass vs plain forwards,
attribution vs one forward, patching from a cached layer input vs a full patched forward.

Every stage calls the functions the rule scripts call (minormech), on the same prompts
and batch sizes as the forward it is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.caching import write_benchmark_shard
from benchmarks.common import best_of, stopwatch
from minormech.activations import Recording, extract_activations
from minormech.attribution import AttributionSettings, attribute_prompts
from minormech.hooks import site_hooks
from minormech.patching import patch_hook, patched_first_logits
from minormech.probes import (
    ProbeData,
    ProbeGroup,
    ProbeTraining,
    batch_order,
    order_rng,
    per_probe_mse,
    predict_stacks,
    train_probe_groups,
)
from minormech.prompts import Prompt
from minormech.runner import (
    RunOptions,
    answer_prob,
    batched,
    last_logits,
    right_padded,
    teacher_forced_batch,
    unpatched_run,
)
from minormech.shards import STORE_DTYPES, Shard
from minormech.stream import StreamSource, reuse_freed_memory

#: Filter variants per site beside the unfiltered probe (eq. 35: h in {0.5, 0.25}, op in {<=, >=}).
N_FILTER_VARIANTS = 4


def _write_set_shard(
    path: Path, model, prompts: Sequence[Prompt], sites, layers, batch_size: int, pad_id: int, prompt_set: str
) -> Shard:
    activations = extract_activations(
        model, prompts, Recording(sites, layers, STORE_DTYPES["float16"]), RunOptions(batch_size, pad_id)
    )
    write_benchmark_shard(path, prompts, sites, layers, "float16", activations, prompt_set)
    return Shard(path)


def probe_stacking(
    model,
    pad_id: int,
    train_prompts,
    test_prompts,
    sites,
    work: Path,
    steps: int,
    d_proj: int,
    batch_size: int,
    solo_limit: int,
    log,
) -> list[dict]:
    """Per site: V = 1 + 4 variants x L layers trained stacked (one train_probe_groups call) vs
    each (variant, layer) probe trained alone with the same code, seeds and data order.
    The paper regime (Adam, batch 1, fixed steps) makes the two the same optimisation, so
    their test MSEs must agree to float rounding. Returns one row per site."""
    layers = list(range(len(model.model.layers)))
    device = next(model.parameters()).device
    train_shard = _write_set_shard(
        work / "probe_train.safetensors", model, train_prompts, sites, layers, batch_size, pad_id, "probe_train"
    )
    test_shard = _write_set_shard(
        work / "probe_test.safetensors", model, test_prompts, sites, layers, batch_size, pad_id, "probe_test"
    )
    settings = ProbeTraining(regime="paper", d_proj=d_proj, lr=1e-4, batch_size=1, steps=steps, seed=0)
    max_positions = max(p.length for p in [*train_prompts, *test_prompts])
    rows = []
    for site in sites:
        train = ProbeData([train_shard], train_prompts, site, layers)
        test = ProbeData([test_shard], test_prompts, site, layers)
        generator = torch.Generator().manual_seed(1)
        masks = torch.ones(1 + N_FILTER_VARIANTS, len(layers), train.width(site))
        masks[1:] = (torch.rand(N_FILTER_VARIANTS, len(layers), train.width(site), generator=generator) < 0.5).float()
        masks = masks.to(device)
        next(train.read([np.arange(1)]))  # the chunk is read into memory before any timing
        with stopwatch(device) as stacked_time:
            stacked, _ = train_probe_groups(train, [ProbeGroup(site, masks)], settings, max_positions, device)
        (predictions,), index = predict_stacks(stacked, test, 64)
        stacked_mse = per_probe_mse(predictions, test.targets[index])  # [V, L]

        probes = [(v, l) for v in range(masks.shape[0]) for l in range(len(layers))]
        rng = np.random.default_rng(2)
        timed = (
            probes
            if not solo_limit or solo_limit >= len(probes)
            else [probes[i] for i in sorted(rng.choice(len(probes), solo_limit, replace=False))]
        )
        solo_seconds, differences = 0.0, []
        for v, l in timed:
            alone_train = ProbeData([train_shard], train_prompts, site, [layers[l]])
            alone_test = ProbeData([test_shard], test_prompts, site, [layers[l]])
            next(alone_train.read([np.arange(1)]))
            mask = masks[v : v + 1, l : l + 1]
            with stopwatch(device) as alone_time:
                alone, _ = train_probe_groups(
                    alone_train, [ProbeGroup(site, mask, variant_ids=[v])], settings, max_positions, device
                )
            solo_seconds += alone_time["seconds"]
            (alone_predictions,), alone_index = predict_stacks(alone, alone_test, 64)
            alone_mse = per_probe_mse(alone_predictions, alone_test.targets[alone_index])[0, 0]
            differences.append(abs(alone_mse.item() - stacked_mse[v, l].item()) / stacked_mse[v, l].item())
        all_solo_seconds = solo_seconds * len(probes) / len(timed)
        rows.append(
            {
                "site": site,
                "probes": len(probes),
                "probes_timed_alone": len(timed),
                "steps": steps,
                "stacked_s": stacked_time["seconds"],
                "alone_s": all_solo_seconds,
                "speedup": all_solo_seconds / stacked_time["seconds"],
                "max_rel_mse_diff": max(differences),
            }
        )
        log(f"probes {site}: {rows[-1]}")
    return rows


def attribution_cost(
    model, pad_id: int, prompts, sites, batch_size: int, repeats: int, methods: Sequence[str]
) -> list[dict]:
    """Seconds per prompt of attribution over every (site, layer), divided by seconds per
    prompt of one forward pass of the same teacher-forced batches (answer_prob)."""
    device = next(model.parameters()).device
    layers = list(range(len(model.model.layers)))
    batches = batched(prompts, batch_size)

    def forward():
        with torch.no_grad():
            for chunk in batches:
                answer_prob(model, teacher_forced_batch(chunk, pad_id, device))

    attribute_prompts(
        model, prompts[:batch_size], sites, layers, AttributionSettings(batch_size=batch_size), pad_id
    )  # warm-up
    forward_s = best_of(repeats, device, forward)
    rows = []
    for method in methods:
        settings = AttributionSettings(method=method, batch_size=batch_size)
        seconds = best_of(repeats, device, lambda: attribute_prompts(model, prompts, sites, layers, settings, pad_id))
        rows.append(
            {
                "method": method,
                "sites": len(sites),
                "layers": len(layers),
                "prompts": len(prompts),
                "forward_s_per_prompt": forward_s / len(prompts),
                "attribution_s_per_prompt": seconds / len(prompts),
                "ratio": seconds / forward_s,
            }
        )
    return rows


def patching_cost(
    model, pad_id: int, base_prompts, source_prompts, site: str, patch_layers: Sequence[int], repeats: int
) -> list[dict]:
    """Seconds of the patched prompt pass started from the cached residual entering the
    patched layer (what patching_counts runs) vs a full patched forward from the tokens,
    both ending in the last position's logits. The ratio should be about (L - layer) / L."""
    device = next(model.parameters()).device
    n_layers = len(model.model.layers)
    base = unpatched_run(model, base_prompts, [site], patch_layers, pad_id)
    source = unpatched_run(model, source_prompts, [site], patch_layers, pad_id)
    width = source.sites[(site, patch_layers[0])].shape[-1]
    keep = torch.arange(width) % 2 == 0
    rows = []
    for layer in patch_layers:

        def full():
            with (
                torch.inference_mode(),
                site_hooks(model, [site], [layer], patch_hook(base, source, site, layer, keep, "end")),
            ):
                hidden = model.model(
                    input_ids=base.input_ids, attention_mask=base.attention_mask, use_cache=True
                ).last_hidden_state
                last_logits(model, hidden, base.lengths)

        def from_cache():
            patched_first_logits(model, base, source, site, layer, keep, "end")

        full()
        from_cache()
        full_s = best_of(repeats, device, full)
        cached_s = best_of(repeats, device, from_cache)
        rows.append(
            {
                "site": site,
                "layer": layer,
                "full_s": full_s,
                "from_cache_s": cached_s,
                "ratio": cached_s / full_s,
                "expected": (n_layers - layer) / n_layers,
            }
        )
    return rows


def stream_cost(
    model,
    pad_id: int,
    prompts: Sequence[Prompt],
    site_sets: Sequence[Sequence[str]],
    widths: dict[str, int],
    batch_size: int,
    d_proj: int,
    repeats: int,
    log,
) -> list[dict]:
    """Seconds of one stream-mode training pass over N prompts / seconds of N plain
    forwards (``model(input_ids, attention_mask)``) over the same batches.

    The pass is what the stream job spends on its training prompts: the decoder over each
    forward batch with every site recorded, then one optimizer step of every probe of the
    job (per site: 1 unfiltered + 4 filtered variants x all layers) per probe batch. Rows:
    probe batch = forward batch (the improved regime's batching, the issue's target), and
    probe batch 1 (the paper regime: `batch_size` steps per forward)."""
    reuse_freed_memory()  # as the stream_probes job does; process-wide, so this stage runs last
    device = next(model.parameters()).device
    layers = list(range(len(model.model.layers)))
    chunk_sizes = [len(prompts)]
    order = list(batch_order(chunk_sizes, batch_size, rng=order_rng(0)))  # the training order of probe seed 0

    def plain():
        with torch.inference_mode():
            for rows in order:
                ids, mask = right_padded([prompts[i].input_ids for i in rows], pad_id, device)
                model(input_ids=ids, attention_mask=mask, use_cache=False)

    plain()  # warm-up
    plain_s = best_of(repeats, device, plain)
    rows_out = []
    for sites in site_sets:
        generator = torch.Generator().manual_seed(1)
        groups = [
            ProbeGroup(site, masks, name=f"{site} {kind}")
            for site in sites
            for kind, masks in (
                ("unfiltered", None),
                (
                    "filtered",
                    (torch.rand(N_FILTER_VARIANTS, len(layers), widths[site], generator=generator) < 0.5).float(),
                ),
            )
        ]
        for probe_batch in (batch_size, 1):
            steps = len(prompts) // probe_batch
            # one pass: N prompts in N / probe_batch steps; the same batch order as `plain` when
            # probe_batch = batch_size
            settings = ProbeTraining(
                regime="paper", d_proj=d_proj, lr=1e-4, batch_size=probe_batch, steps=steps, seed=0
            )
            max_positions = max(p.length for p in prompts)

            def stream_pass():
                source = StreamSource(model, prompts, sites, layers, widths, batch_size, pad_id, chunk_sizes)
                train_probe_groups(source, groups, settings, max_positions, device)
                assert source.forward_prompts == steps * probe_batch

            stream_s = best_of(repeats, device, stream_pass)
            rows_out.append(
                {
                    "sites": " ".join(sites),
                    "probes": sum(len(layers) * (1 if g.feature_masks is None else N_FILTER_VARIANTS) for g in groups),
                    "prompts": len(prompts),
                    "forward_batch": batch_size,
                    "probe_batch": probe_batch,
                    "stream_s": stream_s,
                    "plain_s": plain_s,
                    "ratio": stream_s / plain_s,
                }
            )
            log(f"stream {rows_out[-1]}")
    return rows_out
