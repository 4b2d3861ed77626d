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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from minormech.controls import control_targets
from minormech.probes import ProbeTraining
from minormech.prompts import Prompt
from minormech.provenance import PROMPTS_KEY, PromptDigests, to_text
from minormech.ranking import FILTER_VARIANT_NAMES, FILTER_VARIANTS, HALVES, QUARTERS, site_keep_masks
from minormech.shards import save_tensors
from minormech.uncertainty import Bootstrap

log = logging.getLogger(__name__)

PROBE_KINDS = ("unfiltered", "filtered")
#: How the ridge readouts beside the unfiltered probes (minormech.ridge_probes) turn a
#: prompt's token activations into one vector: their mean, or the last token's.
POOLINGS = ("mean", "last")


def ridge_column(pooling: str) -> str:
    """The probe-table column of one pooling's readout test MSE (with _ci_low, _ci_high)."""
    return f"ridge_{pooling}_mse"


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
    """Which probes a table describes: model, task, site, layers and variants, and the
    prompt files they were computed from (minormech.provenance)."""

    model_id: str
    task: str
    site: str
    layers: Sequence[int]
    variants: ProbeVariants
    prompts: PromptDigests


@dataclass(frozen=True)
class ControlScores:
    """The control task (Hewitt and Liang 2019) on its evaluation prompts: new prompts of
    weights the probes trained on, where the control target pi(w) is learnable by
    remembering each weight. The unfiltered task probe's predictions [seeds, L, Nc, 2] of w
    and the control probe's of pi(w), the prompts' weight ids [Nc], targets w and pi(w)
    [Nc, 2], and each target's training-mean baseline (the mean of w, resp. pi(w), over
    the training weights)."""

    task_predictions: torch.Tensor
    control_predictions: torch.Tensor
    weight_ids: torch.Tensor
    targets: torch.Tensor
    control_targets: torch.Tensor
    baselines: tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ProbePredictions:
    """Test predictions [V * seeds, L, N, 2] (seed-minor, as ProbeStack orders them) of the
    test prompts `index`, optionally the control task's scores, and the ridge readouts'
    predictions {pooling: [L, N, 2]} of the same prompts (minormech.ridge_probes; empty
    when they are off or the table is filtered)."""

    predictions: torch.Tensor
    index: torch.Tensor
    control: ControlScores | None = None
    ridge: dict[str, torch.Tensor] = field(default_factory=dict)


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


def control_intervals(control: ControlScores, interval: Bootstrap) -> dict[str, tuple]:
    """The control-task columns of a probe table, each (interval, per layer?): the control
    probe's MSE and its baseline's, the gains of the task probe (`seen_task_gain`: on
    prompts of seen weights) and of the control probe, and the selectivity, all bootstrapped
    over the control prompts' weights (and seeds), the differences paired."""
    groups = control.weight_ids.numpy()
    task_base, control_baseline = control.baselines
    control_base = squared_errors(control_baseline.expand_as(control.control_targets), control.control_targets)
    control_errors = squared_errors(control.control_predictions, control.control_targets)  # [S, L, Nc]
    task_gain = squared_errors(task_base.expand_as(control.targets), control.targets) - squared_errors(
        control.task_predictions, control.targets
    )
    control_gain = control_base - control_errors
    return {
        "control_mse": (interval(control_errors, groups, seed_axis=True), True),
        "control_baseline_mse": (interval(control_base, groups), False),
        "seen_task_gain": (interval(task_gain, groups, seed_axis=True), True),
        "control_gain": (interval(control_gain, groups, seed_axis=True), True),
        "selectivity": (interval(task_gain - control_gain, groups, seed_axis=True), True),
    }


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

    A control in `result` adds to each row the control probe's MSE on pi(w) and its
    baseline's, both probes' gains over their own baselines on the control prompts and the
    selectivity (task gain - control gain, paired over the same prompts). Every MSE comes
    with its bootstrap interval over the test weights (the control columns: over the
    control prompts' weights) and seeds. `gain` (a probe's gain: its baseline's MSE minus
    its own) is bootstrapped as per-prompt differences over the same resamples (paired),
    so its interval says whether the probe beats the baseline. Filtered tables also carry
    the paired differences the filtered claims rest on: `halves_difference`, the MSE on
    the first task's half minus on the second's (r(t, >=, 0.5) - r(t, <=, 0.5), what eq.
    41 signs), and `quarter_minus_half_ge` / `_le`, the MSE on each task's own quarter
    minus on its own half (r(t, >=, 0.25) - r(t, >=, 0.5), r(t, <=, 0.75) - r(t, <=, 0.5):
    above zero where the quarter loses what the half had, H3).
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
    baseline_errors = squared_errors(report.train_weights.float().mean(0).expand_as(targets), targets)  # [N]
    references = {"baseline_mse": report.interval(baseline_errors, groups)}
    gain = report.interval(baseline_errors - errors, groups, seed_axis=True)
    differences = {}  # paired differences between variants, per layer
    if set(HALVES) | set(QUARTERS) <= set(variants.names):
        position = {name: variants.names.index(name) for name in (*HALVES, *QUARTERS)}
        for name, (minuend, subtrahend) in {
            "halves_difference": HALVES,
            "quarter_minus_half_ge": (QUARTERS[0], HALVES[0]),
            "quarter_minus_half_le": (QUARTERS[1], HALVES[1]),
        }.items():
            difference = errors[:, position[minuend]] - errors[:, position[subtrahend]]
            differences[name] = report.interval(difference, groups, seed_axis=True)
    least_squares = None
    if report.least_squares is not None:
        least_squares = report.least_squares[index]
        references["ceiling_mse"] = report.interval(squared_errors(least_squares, targets), groups)
    ridge_columns = {
        ridge_column(pooling): report.interval(squared_errors(values, targets), groups)
        for pooling, values in result.ridge.items()
    }
    control_columns = control_intervals(control, report.interval) if control is not None else {}
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
                **gain.columns("gain", (v, l)),
                "test_mse_seed_sd": float(seed_sd[v, l]),
                "n_seeds": seeds,
            }
            for key, interval in references.items():
                row.update(interval.columns(key))
            for key, interval in (*differences.items(), *ridge_columns.items()):
                row.update(interval.columns(key, (l,)))
            for key, (interval, per_layer) in control_columns.items():
                row.update(interval.columns(key, (l,) if per_layer else ()))
            if control is not None:
                row["n_control"] = len(control.weight_ids)
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
    for pooling, values in result.ridge.items():
        tensors[f"ridge_{pooling}"] = values.contiguous()
    if control is not None:
        tensors["control_task_predictions"] = control.task_predictions.contiguous()
        tensors["control_predictions"] = control.control_predictions.contiguous()
        tensors["control_targets"] = control.control_targets.contiguous()
        tensors["control_weights"] = control.targets.contiguous()
        tensors["control_weight_ids"] = control.weight_ids.contiguous()
    save_tensors(
        tensors,
        outputs.predictions,
        metadata={
            "layers": json.dumps(list(layers)),
            "variants": json.dumps(variants.names),
            "seeds": str(seeds),
            PROMPTS_KEY: to_text(identity.prompts),
        },
        made_from=f"the {identity.model_id} {identity.task} {identity.site} probes' training (diverged, or "
        "non-finite activations from the model)",
    )
    with open(outputs.summary, "w") as handle:
        json.dump(
            {**summary, "settings": asdict(settings), "variants": variants.names, PROMPTS_KEY: identity.prompts},
            handle,
            indent=2,
        )
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
        log.info(
            "%s %s selectivity per layer (%d control prompts): %s",
            task,
            site,
            len(control.weight_ids),
            [round(x, 2) for x in control_columns["selectivity"][0].mean.tolist()],
        )
    return torch.as_tensor(test_mse.mean)
