"""The paper's figures (§6). Every figure is written as PDF and PNG with its numbers as a
CSV beside it, so a reader can check a curve without rerunning anything."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

TASK_COLOURS = {"LR": "tab:red", "MD": "tab:blue"}


def save_figure(fig, pdf: str | Path, png: str | Path) -> None:
    fig.savefig(pdf, bbox_inches="tight")
    fig.savefig(png, bbox_inches="tight", dpi=150)
    plt.close(fig)


def panels(n: int):
    """A row of n panels sharing the y axis (one per task)."""
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), sharey=True, squeeze=False)
    return fig, list(axes[0])


def finish_panel(ax, title: str, xlabel: str = "layer") -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def finish_figure(fig, axes, ylabel: str, title: str):
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def probe_curves_figure(table: pd.DataFrame, model_id: str, site: str):
    """Figure 1: probe test MSE per layer, one panel per task, with the training-mean
    baseline as a dashed line. `table` has columns task, layer, test_mse, baseline_mse."""
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = panels(len(tasks))
    for ax, task in zip(axes, tasks):
        rows = table[table["task"] == task].sort_values("layer")
        ax.plot(rows["layer"], rows["test_mse"], marker="o", color=TASK_COLOURS.get(task, "black"), label=f"probe ({task})")
        baseline = rows["baseline_mse"].iloc[0]
        ax.axhline(baseline, linestyle="--", color="grey", label=f"training-mean baseline ({baseline:.2f})")
        finish_panel(ax, f"{task}: probe on site {site}")
    return finish_figure(fig, axes, "test MSE", f"{model_id}: probe test MSE per layer (lower = weights better decodable)")


def xi_heatmap_figure(xi: np.ndarray, layers: list[int], model_id: str, site: str, pair: tuple[str, str]):
    """Figure 2: xi per layer (rows) and feature (columns). Red = larger rank for task 1
    (more important for it), blue = more important for task 2."""
    import numpy as np

    d = xi.shape[1]
    fig, ax = plt.subplots(figsize=(10, 0.18 * len(layers) + 2))
    image = ax.imshow(xi, aspect="auto", cmap="RdBu_r", vmin=-(d - 1), vmax=d - 1, interpolation="nearest", origin="lower")
    ax.set_yticks(np.arange(len(layers))[:: max(1, len(layers) // 10)], [str(l) for l in layers][:: max(1, len(layers) // 10)])
    ax.set_xlabel("feature")
    ax.set_ylabel("layer")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"xi = rank(FA_{pair[0]}) - rank(FA_{pair[1]})")
    bar.set_ticks([-(d - 1), 0, d - 1], labels=[f"{pair[1]} (blue)", "0", f"{pair[0]} (red)"])
    ax.set_title(f"{model_id}, site {site}: red = more important for {pair[0]}, blue = more important for {pair[1]}")
    fig.tight_layout()
    return fig


def filtered_probe_figure(table: pd.DataFrame, unfiltered: pd.DataFrame, variants: list[str], model_id: str, site: str, pair: tuple[str, str]):
    """Figures 3 and 4: filtered probe test MSE per layer, one panel per probe task, one
    curve per filter variant; the unfiltered probe (thin grey) and the baseline (dashed)
    for reference. `table` has columns task, variant, layer, test_mse, baseline_mse."""
    labels = {"ge": f"{pair[0]}-important features (>=)", "le": f"{pair[1]}-important features (<=)"}
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = panels(len(tasks))
    for ax, task in zip(axes, tasks):
        reference = unfiltered[unfiltered["task"] == task].sort_values("layer")
        ax.plot(reference["layer"], reference["test_mse"], color="grey", linewidth=1, label="unfiltered")
        for variant, style in zip(variants, ("-o", "-s")):
            rows = table[(table["task"] == task) & (table["variant"] == variant)].sort_values("layer")
            colour = TASK_COLOURS.get(pair[0] if variant.startswith("ge") else pair[1], "black")
            ax.plot(rows["layer"], rows["test_mse"], style, color=colour, markersize=3, label=f"{variant}: {labels[variant[:2]]}")
        ax.axhline(table[table["task"] == task]["baseline_mse"].iloc[0], linestyle="--", color="grey", label="training-mean baseline")
        finish_panel(ax, f"probe for {task} weights, site {site}")
    return finish_figure(fig, axes, "test MSE", f"{model_id}: probes on filtered features ({', '.join(variants)})")


def eq41_table(table: pd.DataFrame, pair: tuple[str, str]) -> pd.DataFrame:
    """Per layer, whether r(t1, >=, 0.5) < r(t1, <=, 0.5) and r(t2, >=, 0.5) > r(t2, <=, 0.5)
    (paper eq. 41: each task is probed better on its own important half)."""
    wide = table.pivot_table(index="layer", columns=["task", "variant"], values="test_mse")
    t1, t2 = pair
    out = pd.DataFrame({
        f"r_{t1}_ge0.5": wide[(t1, "ge0.5")], f"r_{t1}_le0.5": wide[(t1, "le0.5")],
        f"r_{t2}_ge0.5": wide[(t2, "ge0.5")], f"r_{t2}_le0.5": wide[(t2, "le0.5")],
    })
    out[f"{t1}_better_on_own_half"] = out[f"r_{t1}_ge0.5"] < out[f"r_{t1}_le0.5"]
    out[f"{t2}_better_on_own_half"] = out[f"r_{t2}_ge0.5"] > out[f"r_{t2}_le0.5"]
    out["eq41_holds"] = out[f"{t1}_better_on_own_half"] & out[f"{t2}_better_on_own_half"]
    return out.reset_index()


def patching_figure(counts: pd.DataFrame, accuracy: pd.DataFrame, model_id: str, site: str):
    """Figure 5: rho (pairs whose patched prediction equals the reference's unpatched one)
    per patched layer for the eight settings; one panel per tau1. Solid = basic (B),
    dashed = swapped (S); colour = the task u of the other prompt."""
    tau1s = list(dict.fromkeys(counts["tau1"]))
    fig, axes = panels(len(tau1s))
    n_pairs = int(counts["n_pairs"].iloc[0])
    for ax, tau1 in zip(axes, tau1s):
        for (u, v), rows in counts[counts["tau1"] == tau1].groupby(["u", "v"]):
            rows = rows.sort_values("layer")
            ax.plot(rows["layer"], rows["rho"], "-o" if v == "B" else "--s", markersize=3, color=TASK_COLOURS.get(u, "black"), label=f"rho({tau1},{u},{v})")
        ax.axhline(n_pairs, color="grey", linewidth=0.8)
        ref = accuracy[(accuracy["prompt_set"] == "reference") & (accuracy["task"] == tau1)]
        finish_panel(ax, f"tau1 = {tau1} (unpatched accuracy {ref['accuracy'].iloc[0]:.0%})", "patched layer")
    return finish_figure(fig, axes, f"rho (of {n_pairs} pairs)", f"{model_id}, site {site}: predictions unchanged by patching half the features")
