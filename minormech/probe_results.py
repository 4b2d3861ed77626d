"""The files one (model, task, site, probe kind) of probes leaves: a CSV of test MSE per
(variant, layer), the test predictions (safetensors) and a JSON summary of training.

Shard mode (one job per site and kind) and stream mode (one job per model and task) write
them with the same function, so figures and later rules cannot tell which source made them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from minormech.hooks import hook_name
from minormech.probes import ProbeTraining, per_probe_mse
from minormech.prompts import Prompt
from minormech.ranking import FILTER_VARIANTS, site_keep_masks, variant_name
from minormech.shards import save_tensors

log = logging.getLogger(__name__)

PROBE_KINDS = ("unfiltered", "filtered")


@dataclass
class ProbeVariants:
    """The variants of one probe kind: names, (op, h) and keep-masks [V, L, d] (None for
    the single unfiltered variant)."""

    names: list[str]
    ops: list[str]
    hs: list[float]
    masks: torch.Tensor | None

    @classmethod
    def of_kind(cls, kind: str, site: str, layers: Sequence[int], xi: dict[str, torch.Tensor] | None) -> "ProbeVariants":
        """`unfiltered`, or the four filtered variants of SPEC "Filter" from the first task
        pair's xi (features masked at read time; no second copy of any activation)."""
        if kind == "unfiltered":
            return cls(["unfiltered"], [""], [1.0], None)
        if kind != "filtered" or xi is None:
            raise ValueError(f"probe kind {kind!r} needs {'an xi map' if kind == 'filtered' else 'one of ' + str(PROBE_KINDS)}")
        masks = torch.stack([site_keep_masks(xi, site, list(layers), op, h) for op, h in FILTER_VARIANTS]).float()
        return cls([variant_name(op, h) for op, h in FILTER_VARIANTS], [op for op, _ in FILTER_VARIANTS], [h for _, h in FILTER_VARIANTS], masks)


def xi_tensor_names(sites: Sequence[str], layers: Sequence[int]) -> list[str]:
    return [hook_name(site, layer) for site in sites for layer in layers]


@dataclass
class ProbeOutputs:
    table: str | Path
    predictions: str | Path
    summary: str | Path


def write_probe_results(
    outputs: ProbeOutputs,
    model_id: str,
    task: str,
    site: str,
    layers: Sequence[int],
    variants: ProbeVariants,
    predictions: torch.Tensor,
    index: torch.Tensor,
    test_prompts: Sequence[Prompt],
    test_targets: torch.Tensor,
    baseline_mse: float,
    n_train: int,
    settings: ProbeTraining,
    summary: dict,
) -> torch.Tensor:
    """Write the three files of one (task, site, kind); returns the test MSE [V, L]."""
    targets = test_targets[index]
    test_mse = per_probe_mse(predictions, targets)
    rows = []
    for v, name in enumerate(variants.names):
        for l, layer in enumerate(layers):
            n_kept = int(variants.masks[v, l].sum()) if variants.masks is not None else None
            rows.append({"model": model_id, "task": task, "site": site, "variant": name, "op": variants.ops[v], "h": variants.hs[v],
                         "layer": layer, "test_mse": test_mse[v, l].item(), "baseline_mse": baseline_mse, "n_kept": n_kept,
                         "n_train": n_train, "n_test": len(test_prompts)})
    pd.DataFrame(rows).to_csv(outputs.table, index=False)
    save_tensors(
        {"predictions": predictions.contiguous(), "targets": targets, "prompt_ids": torch.tensor([test_prompts[i].id for i in index])},
        outputs.predictions,
        metadata={"layers": json.dumps(list(layers)), "variants": json.dumps(variants.names)},
    )
    with open(outputs.summary, "w") as handle:
        json.dump({**summary, "settings": asdict(settings), "variants": variants.names}, handle, indent=2)
    for v, name in enumerate(variants.names):
        log.info("%s %s %s test MSE per layer: %s (baseline %.2f)", task, site, name, [round(x, 2) for x in test_mse[v].tolist()], baseline_mse)
    return test_mse
