"""A model's findings in one place: results/<model>/summary.json and summary.md.

For each site: how well each task's weights are decoded (best layer against the
baseline, the least-squares ceiling, the control task and the random-init model), the
layers meeting eq. 41 (H2), the layers where the 25% probes lose what the 50% probes had
(H3), and the patching counts against their controls. Every comparison is a paired
bootstrap over the same resamples (test weights and probe seeds; prompt pairs for
patching), so a layer is listed as significant only when its interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from minormech.probe_results import POOLINGS, ridge_column, squared_errors
from minormech.ranking import HALVES
from minormech.shards import load_tensors
from minormech.uncertainty import Bootstrap, Interval


def as_dict(interval: Interval, index=()) -> dict[str, float]:
    return {"mean": float(interval.mean[index]), "low": float(interval.low[index]), "high": float(interval.high[index])}


@dataclass
class ProbeErrors:
    """Per-prompt squared errors of one probe file: [S, V, L, N], with the test weight of
    every prompt (the bootstrap groups) and the variant names."""

    errors: np.ndarray
    groups: np.ndarray
    variants: list[str]
    baseline: np.ndarray  # [N] squared error of the training-mean prediction
    prompt_ids: np.ndarray  # [N] which test prompt each column is

    @classmethod
    def read(cls, path: str | Path, train_mean: np.ndarray, variants: Sequence[str]) -> ProbeErrors:
        """The errors of a predictions file written by minormech.probe_results, whose
        variants are `variants` in order."""
        tensors = load_tensors(path, ["predictions", "targets", "weight_ids", "prompt_ids"])
        predictions, targets = tensors["predictions"], tensors["targets"]  # [V, S, L, N, 2], [N, 2]
        if predictions.shape[0] != len(variants):
            raise ValueError(
                f"{path}: {predictions.shape[0]} probe variants, expected {len(variants)} ({list(variants)}); "
                "delete it and rerun"
            )
        errors = squared_errors(predictions, targets).transpose(1, 0, 2, 3)
        baseline = squared_errors(targets, torch.as_tensor(train_mean, dtype=targets.dtype))
        return cls(errors, tensors["weight_ids"].numpy(), list(variants), baseline, tensors["prompt_ids"].numpy())

    def variant(self, name: str) -> np.ndarray:
        """[S, L, N] errors of one variant."""
        return self.errors[:, self.variants.index(name)]


def probe_summary(
    unfiltered: pd.DataFrame,
    errors: ProbeErrors,
    bootstrap: Bootstrap,
    random_init: tuple[pd.DataFrame, ProbeErrors] | None = None,
) -> dict:
    """Best layer of one (task, site)'s unfiltered probe with the references beside it; the
    layers where the probe beats the training-mean baseline (paired interval of probe -
    baseline over the same test weights and seeds below zero) and, of those, the layers
    where it also beats the random-init model's probe (paired interval of probe -
    random-init, same test prompts, below zero)."""
    best = unfiltered.loc[unfiltered["test_mse"].idxmin()]
    layers = [int(layer) for layer in unfiltered["layer"]]
    probe = errors.variant("unfiltered")
    gain = bootstrap(probe - errors.baseline[None, None, :], errors.groups, seed_axis=True)
    below = [layer for l, layer in enumerate(layers) if gain.high[l] < 0]

    def interval(row, name):
        if name not in row or pd.isna(row[name]):
            return None
        return {"mean": float(row[name]), "low": float(row[f"{name}_ci_low"]), "high": float(row[f"{name}_ci_high"])}

    out = {
        "best_layer": int(best["layer"]),
        "test_mse": interval(best, "test_mse"),
        "baseline_mse": interval(best, "baseline_mse"),
        "ceiling_mse": interval(best, "ceiling_mse"),
        "selectivity_at_best_layer": interval(best, "selectivity"),
        "layers_below_baseline": below,
        "probe_minus_baseline": [{"layer": layer, **as_dict(gain, l)} for l, layer in enumerate(layers)],
    }
    ridge = {}
    for pooling in POOLINGS:
        column = ridge_column(pooling)
        if column in unfiltered and unfiltered[column].notna().any():
            lowest = unfiltered.loc[unfiltered[column].idxmin()]
            ridge[pooling] = {"layer": int(lowest["layer"]), "test_mse": interval(lowest, column)}
    if ridge:
        out["ridge_best"] = ridge
    if "selectivity" in unfiltered:
        out["layers_selective"] = [int(l) for l in unfiltered.loc[unfiltered["selectivity_ci_low"] > 0, "layer"]]
    if random_init is not None:
        table, control = random_init
        if not np.array_equal(control.prompt_ids, errors.prompt_ids) or control.errors.shape != errors.errors.shape:
            raise ValueError(
                "the random-init probes were tested on other prompts (or layers, or seeds) than the model's; "
                "delete both models' probe files and rerun"
            )
        control_best = table.loc[table["test_mse"].idxmin()]
        out["random_init_best"] = {"layer": int(control_best["layer"]), "test_mse": interval(control_best, "test_mse")}
        versus = bootstrap(probe - control.variant("unfiltered"), errors.groups, seed_axis=True)
        out["layers_below_random_init"] = [
            layer for l, layer in enumerate(layers) if versus.high[l] < 0 and layer in below
        ]
        out["probe_minus_random_init"] = [{"layer": layer, **as_dict(versus, l)} for l, layer in enumerate(layers)]
    return out


def eq41_summary(first: ProbeErrors, second: ProbeErrors, layers: Sequence[int], bootstrap: Bootstrap) -> dict:
    """Eq. 41 per layer: d1 = r(t1, >=, .5) - r(t1, <=, .5) < 0 and d2 = r(t2, >=, .5) -
    r(t2, <=, .5) > 0. `holds` uses the means (the paper's reading), `significant` needs
    both intervals to exclude zero."""
    d1 = bootstrap(first.variant(HALVES[0]) - first.variant(HALVES[1]), first.groups, seed_axis=True)
    d2 = bootstrap(second.variant(HALVES[0]) - second.variant(HALVES[1]), second.groups, seed_axis=True)
    per_layer = [{"layer": int(layer), "d1": as_dict(d1, l), "d2": as_dict(d2, l)} for l, layer in enumerate(layers)]
    return {
        "layers_holding": [int(layer) for l, layer in enumerate(layers) if d1.mean[l] < 0 and d2.mean[l] > 0],
        "layers_significant": [int(layer) for l, layer in enumerate(layers) if d1.high[l] < 0 and d2.low[l] > 0],
        "per_layer": per_layer,
    }


def h3_summary(errors: ProbeErrors, half: str, quarter: str, layers: Sequence[int], bootstrap: Bootstrap) -> dict:
    """H3 for one task: layers where the probe on the task's own important half decodes w
    (interval of half - baseline below zero) and the probe on its own important quarter is
    worse than the half (interval of quarter - half above zero)."""
    half_errors = errors.variant(half)
    gain = bootstrap(half_errors - errors.baseline[None, None, :], errors.groups, seed_axis=True)
    loss = bootstrap(errors.variant(quarter) - half_errors, errors.groups, seed_axis=True)
    return {
        "half": half,
        "quarter": quarter,
        "layers": [int(layer) for l, layer in enumerate(layers) if gain.high[l] < 0 and loss.low[l] > 0],
        "per_layer": [
            {"layer": int(layer), "half_minus_baseline": as_dict(gain, l), "quarter_minus_half": as_dict(loss, l)}
            for l, layer in enumerate(layers)
        ],
    }


def patching_summary(counts: pd.DataFrame, pairs: pd.DataFrame | None, bootstrap: Bootstrap) -> dict:
    """Per setting: rho of the xi patch per layer with its interval, beside the random and
    no-op patches, and the layers where xi and random differ (paired over prompt pairs)."""
    out = {}
    for setting, rows in counts.groupby("setting", sort=False):
        entry = {"layers": {}}
        for (layer, patch), row in rows.set_index(["layer", "patch"]).iterrows():
            entry["layers"].setdefault(str(int(layer)), {})[patch] = {
                "rho": {"mean": float(row["rho"]), "low": float(row["rho_ci_low"]), "high": float(row["rho_ci_high"])},
                "dlogp": {
                    "mean": float(row["dlogp"]),
                    "low": float(row["dlogp_ci_low"]),
                    "high": float(row["dlogp_ci_high"]),
                },
            }
        if pairs is not None and {"xi", "random"} <= set(pairs["patch"]):
            differing = []
            for layer, layer_pairs in pairs[pairs["setting"] == setting].groupby("layer"):
                wide = layer_pairs.pivot_table(index="pair", columns="patch", values="same")
                difference = bootstrap(wide["xi"].to_numpy() - wide["random"].to_numpy())
                entry["layers"][str(int(layer))]["xi_minus_random_fraction"] = as_dict(difference)
                if difference.low > 0 or difference.high < 0:
                    differing.append(int(layer))
            entry["layers_xi_differs_from_random"] = differing
        out[setting] = entry
    return out
