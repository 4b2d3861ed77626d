"""The files one (model, task, site, probe kind) of probes leaves: a CSV of test MSE per
(variant, layer) with its interval and the controls beside it, the test predictions
(safetensors, every seed) and a JSON summary of training.

Shard mode (one job per site and kind) and stream mode (one job per model and task) write
them with the same function, so figures and later rules cannot tell which source made them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from minormech.controls import control_targets
from minormech.probes import ProbeTraining
from minormech.prompts import Prompt
from minormech.ranking import FILTER_VARIANT_NAMES, FILTER_VARIANTS, site_keep_masks
from minormech.shards import save_tensors
from minormech.uncertainty import Bootstrap

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
    def of_kind(cls, kind: str, site: str, layers: Sequence[int], xi: dict[str, torch.Tensor] | None) -> ProbeVariants:
        """`unfiltered`, or the four filtered variants of eq. 35 from the first task
        pair's xi (features masked at read time; no second copy of any activation)."""
        if kind == "unfiltered":
            return cls(["unfiltered"], [""], [1.0], None)
        if kind != "filtered" or xi is None:
            raise ValueError(
                f"probe kind {kind!r} needs {'an xi map' if kind == 'filtered' else 'one of ' + str(PROBE_KINDS)}"
            )
        masks = torch.stack([site_keep_masks(xi, site, list(layers), op, h) for op, h in FILTER_VARIANTS]).float()
        return cls(
            list(FILTER_VARIANT_NAMES),
            [op for op, _ in FILTER_VARIANTS],
            [h for _, h in FILTER_VARIANTS],
            masks,
        )


@dataclass
class ProbeOutputs:
    table: str | Path
    predictions: str | Path
    summary: str | Path


@dataclass(frozen=True)
class ProbeReport:
    """How a probe table is reported: the references drawn beside the probes and the
    bootstrap settings."""

    train_weights: torch.Tensor  # [n_train_weights, d]: the training-mean baseline predicts their mean
    least_squares: torch.Tensor | None  # [N, d] least-squares w of every test prompt (the ceiling)
    interval: Bootstrap


@dataclass(frozen=True)
class ProbeIdentity:
    """Which probes a table describes: model, task, site, layers and variants."""

    model_id: str
    task: str
    site: str
    layers: Sequence[int]
    variants: ProbeVariants


@dataclass(frozen=True)
class ProbePredictions:
    """Test predictions [V * seeds, L, N, 2] (seed-minor, as ProbeStack orders them) of the
    test prompts `index`, and optionally (control-task predictions [seeds, L, N, 2], the
    control-task targets of every weight id)."""

    predictions: torch.Tensor
    index: torch.Tensor
    control: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class TestPrompts:
    """The held-out test prompts with their targets, and how many prompts trained the probes."""

    prompts: Sequence[Prompt]
    targets: torch.Tensor
    n_train: int


def control_task_targets(table, seed: int) -> torch.Tensor:
    """[n_weights, d] control-task target pi(w) of every weight id of a task's table."""
    return torch.as_tensor(control_targets(table.weights, seed, table.task), dtype=torch.float32)


def squared_errors(predictions: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """[..., N] per-prompt squared error, mean over coordinates (summed over prompts, the
    MSE of per_probe_mse)."""
    return ((predictions - targets) ** 2).mean(-1).numpy()


def write_probe_results(
    outputs: ProbeOutputs,
    identity: ProbeIdentity,
    result: ProbePredictions,
    test: TestPrompts,
    report: ProbeReport,
    settings: ProbeTraining,
    summary: dict,
) -> torch.Tensor:
    """Write the three files of one (task, site, kind); returns the test MSE [V, L] (mean
    over seeds).

    A control in `result` adds the control task's MSE and the selectivity to each row.
    Every MSE comes with its bootstrap interval over the test weights (and seeds).
    """
    model_id, task, site, layers, variants = (
        identity.model_id,
        identity.task,
        identity.site,
        identity.layers,
        identity.variants,
    )
    predictions, index, control = result.predictions, result.index, result.control
    test_prompts, test_targets, n_train = test.prompts, test.targets, test.n_train
    seeds = settings.seeds
    prompts = [test_prompts[i] for i in index]
    groups = np.array([p.weight_id for p in prompts])
    targets = test_targets[index]
    by_seed = predictions.reshape(len(variants.names), seeds, *predictions.shape[1:])  # [V, S, L, N, 2]
    errors = squared_errors(by_seed, targets).transpose(1, 0, 2, 3)  # [S, V, L, N]
    test_mse = report.interval(errors, groups, seed_axis=True)
    seed_sd = errors.mean(-1).std(0, ddof=1) if seeds > 1 else np.zeros(errors.shape[1:3])
    references = {
        "baseline_mse": report.interval(
            squared_errors(report.train_weights.float().mean(0).expand_as(targets), targets), groups
        )
    }
    least_squares = None
    if report.least_squares is not None:
        least_squares = report.least_squares[index]
        references["ceiling_mse"] = report.interval(squared_errors(least_squares, targets), groups)
    if control is not None:
        control_predictions, control_table = control
        control_errors = squared_errors(control_predictions, control_table[torch.as_tensor(groups)])  # [S, L, N]
        control_mse = report.interval(control_errors, groups, seed_axis=True)
        selectivity = report.interval(control_errors - errors[:, 0], groups, seed_axis=True)
    rows = []
    for v, name in enumerate(variants.names):
        for l, layer in enumerate(layers):
            n_kept = int(variants.masks[v, l].sum()) if variants.masks is not None else None
            row = {
                "model": model_id,
                "task": task,
                "site": site,
                "variant": name,
                "op": variants.ops[v],
                "h": variants.hs[v],
                "layer": layer,
                **test_mse.columns("test_mse", (v, l)),
                "test_mse_seed_sd": float(seed_sd[v, l]),
                "n_seeds": seeds,
            }
            for key, interval in references.items():
                row.update(interval.columns(key))
            if control is not None:
                row.update(control_mse.columns("control_mse", (l,)))
                row.update(selectivity.columns("selectivity", (l,)))
            rows.append({**row, "n_kept": n_kept, "n_train": n_train, "n_test": len(test_prompts)})
    pd.DataFrame(rows).to_csv(outputs.table, index=False)
    tensors = {
        "predictions": by_seed.contiguous(),
        "targets": targets,
        "prompt_ids": torch.tensor([p.id for p in prompts]),
        "weight_ids": torch.as_tensor(groups),
    }
    if least_squares is not None:
        tensors["least_squares"] = least_squares.contiguous()
    if control is not None:
        tensors["control_predictions"] = control[0].contiguous()
        tensors["control_targets"] = control[1][torch.as_tensor(groups)].contiguous()
    save_tensors(
        tensors,
        outputs.predictions,
        metadata={"layers": json.dumps(list(layers)), "variants": json.dumps(variants.names), "seeds": str(seeds)},
        made_from=f"the {identity.model_id} {identity.task} {identity.site} probes' training (diverged, or "
        "non-finite activations from the model)",
    )
    with open(outputs.summary, "w") as handle:
        json.dump({**summary, "settings": asdict(settings), "variants": variants.names}, handle, indent=2)
    baseline = references["baseline_mse"].mean
    for v, name in enumerate(variants.names):
        log.info(
            "%s %s %s test MSE per layer (mean of %d seeds): %s (baseline %.2f)",
            task,
            site,
            name,
            seeds,
            [round(x, 2) for x in test_mse.mean[v].tolist()],
            baseline,
        )
    if control is not None:
        log.info("%s %s selectivity per layer: %s", task, site, [round(x, 2) for x in selectivity.mean.tolist()])
    return torch.as_tensor(test_mse.mean)
