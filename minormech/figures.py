"""The paper's figures (§6). Every figure is written as PDF and PNG with its numbers as a
CSV beside it, so a reader can check a curve without rerunning anything."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from minormech.ranking import HALVES, QUARTERS  # noqa: E402

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


def band(ax, rows: pd.DataFrame, column: str, colour: str, label: str, style: str = "-o") -> None:
    """A per-layer curve of `column` with its interval (columns <column>_ci_low/high) as a
    shaded band."""
    ax.plot(rows["layer"], rows[column], style, color=colour, markersize=3, label=label)
    if f"{column}_ci_low" in rows:
        ax.fill_between(
            rows["layer"], rows[f"{column}_ci_low"], rows[f"{column}_ci_high"], color=colour, alpha=0.15, linewidth=0
        )


def reference_lines(ax, rows: pd.DataFrame) -> None:
    """The model-free references of a probe panel: the training-mean baseline (grey dashed)
    and, when computed, the least-squares ceiling (green dashed), each with its interval."""
    for column, colour, name in (
        ("baseline_mse", "grey", "training-mean baseline"),
        ("ceiling_mse", "tab:green", "least-squares ceiling"),
    ):
        if column not in rows or rows[column].isna().all():
            continue
        value = rows[column].iloc[0]
        ax.axhline(value, linestyle="--", color=colour, linewidth=1, label=f"{name} ({value:.2f})")
        if f"{column}_ci_low" in rows:
            ax.axhspan(
                rows[f"{column}_ci_low"].iloc[0],
                rows[f"{column}_ci_high"].iloc[0],
                color=colour,
                alpha=0.1,
                linewidth=0,
            )


def probe_curves_figure(table: pd.DataFrame, model_id: str, site: str, random_init: pd.DataFrame | None = None):
    """Figure 1: probe test MSE per layer, one column per task: the probe (mean over seeds,
    95% band), the random-init model's probe when present, the baseline and the
    least-squares ceiling. A second row draws what the claims rest on, paired differences
    with their intervals: each probe's gain over the training-mean baseline (baseline MSE -
    probe MSE on the same test prompts; above zero = beats the baseline) and, with the
    control task, the selectivity (task gain - control gain on the control prompts)."""
    tasks = list(dict.fromkeys(table["task"]))
    fig, grid = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7), sharex=True, squeeze=False)
    for column, task in enumerate(tasks):
        rows = table[table["task"] == task].sort_values("layer")
        colour = TASK_COLOURS.get(task, "black")
        ax = grid[0][column]
        band(ax, rows, "test_mse", colour, f"probe ({task})")
        control_rows = None if random_init is None else random_init[random_init["task"] == task].sort_values("layer")
        if control_rows is not None:
            band(ax, control_rows, "test_mse", "black", "random-init model", "-.")
        reference_lines(ax, rows)
        finish_panel(ax, f"{task}: probe on site {site}")
        ax = grid[1][column]
        band(ax, rows, "gain", colour, "gain over baseline")
        if control_rows is not None:
            band(ax, control_rows, "gain", "black", "random-init gain over baseline", "-.")
        if "selectivity" in rows:
            band(ax, rows, "selectivity", "tab:purple", "selectivity (control task)", "--s")
        ax.axhline(0, color="grey", linewidth=0.8)
        finish_panel(ax, f"{task}: paired differences (above 0 = better)")
    grid[0][0].set_ylabel("test MSE")
    grid[1][0].set_ylabel("baseline MSE - probe MSE")
    fig.suptitle(f"{model_id}: probe test MSE per layer (lower = weights better decodable; bands: 95% intervals)")
    fig.tight_layout()
    return fig


def xi_heatmap_figure(xi: np.ndarray, layers: list[int], model_id: str, site: str, pair: tuple[str, str]):
    """Figure 2: xi per layer (rows) and feature (columns). Red = larger rank for task 1
    (more important for it), blue = more important for task 2."""
    import numpy as np

    d = xi.shape[1]
    fig, ax = plt.subplots(figsize=(10, 0.18 * len(layers) + 2))
    image = ax.imshow(
        xi, aspect="auto", cmap="RdBu_r", vmin=-(d - 1), vmax=d - 1, interpolation="nearest", origin="lower"
    )
    ax.set_yticks(
        np.arange(len(layers))[:: max(1, len(layers) // 10)], [str(l) for l in layers][:: max(1, len(layers) // 10)]
    )
    ax.set_xlabel("feature")
    ax.set_ylabel("layer")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"xi = rank(FA_{pair[0]}) - rank(FA_{pair[1]})")
    bar.set_ticks([-(d - 1), 0, d - 1], labels=[f"{pair[1]} (blue)", "0", f"{pair[0]} (red)"])
    ax.set_title(f"{model_id}, site {site}: red = more important for {pair[0]}, blue = more important for {pair[1]}")
    fig.tight_layout()
    return fig


def filtered_probe_figure(
    table: pd.DataFrame, unfiltered: pd.DataFrame, variants: list[str], model_id: str, site: str, pair: tuple[str, str]
):
    """Figures 3 and 4: filtered probe test MSE per layer, one panel per probe task, one
    curve per filter variant with its 95% band; the unfiltered probe (thin grey), the
    baseline and the least-squares ceiling for reference. A second row draws the paired
    difference the figure's claim rests on, per layer with its interval: figure 3 (the
    halves) eq. 41's d = r(t, >=, 0.5) - r(t, <=, 0.5), which eq. 41 wants below zero for
    the first task and above zero for the second; figure 4 (the quarters) each task's own
    quarter minus its own half, above zero where the quarter loses what the half had (H3)."""
    labels = {"ge": f"{pair[0]}-important features (>=)", "le": f"{pair[1]}-important features (<=)"}
    tasks = list(dict.fromkeys(table["task"]))
    differences = difference_panels(table, variants, pair)
    with_difference = bool(differences)
    fig, grid = plt.subplots(
        2 if with_difference else 1,
        len(tasks),
        figsize=(5 * len(tasks), 7 if with_difference else 3.6),
        sharex=True,
        squeeze=False,
    )
    for column, task in enumerate(tasks):
        ax = grid[0][column]
        reference = unfiltered[unfiltered["task"] == task].sort_values("layer")
        ax.plot(reference["layer"], reference["test_mse"], color="grey", linewidth=1, label="unfiltered")
        for variant, style in zip(variants, ("-o", "-s")):
            rows = table[(table["task"] == task) & (table["variant"] == variant)].sort_values("layer")
            colour = TASK_COLOURS.get(pair[0] if variant.startswith("ge") else pair[1], "black")
            band(ax, rows, "test_mse", colour, f"{variant}: {labels[variant[:2]]}", style)
        reference_lines(ax, table[table["task"] == task])
        finish_panel(ax, f"probe for {task} weights, site {site}")
        if with_difference:
            ax = grid[1][column]
            rows = table[(table["task"] == task) & (table["variant"] == variants[0])].sort_values("layer")
            column_name, title = differences[task]
            band(ax, rows, column_name, TASK_COLOURS.get(task, "black"), f"{task} (paired)")
            ax.axhline(0, color="grey", linewidth=0.8)
            finish_panel(ax, title)
    grid[0][0].set_ylabel("test MSE")
    if with_difference:
        grid[1][0].set_ylabel("paired MSE difference")
    fig.suptitle(f"{model_id}: probes on filtered features ({', '.join(variants)}; bands: 95% intervals)")
    fig.tight_layout()
    return fig


def difference_panels(table: pd.DataFrame, variants: list[str], pair: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """For a filtered figure: task -> (column, panel title) of its paired difference; empty
    when the table has no such column (the variants are neither halves nor quarters)."""
    if set(variants) == set(HALVES) and "halves_difference" in table:
        return {
            task: ("halves_difference", f"{task}: paired d = MSE(>=) - MSE(<=)\n(eq. 41 wants it {wanted} 0)")
            for task, wanted in zip(pair, ("below", "above"))
        }
    if set(variants) == set(QUARTERS) and "quarter_minus_half_ge" in table:
        return {
            task: (f"quarter_minus_half_{own}", f"{task}: paired MSE({quarter}) - MSE({half})\n(H3 wants it above 0)")
            for task, own, quarter, half in zip(pair, ("ge", "le"), QUARTERS, HALVES)
        }
    return {}


def eq41_table(table: pd.DataFrame, pair: tuple[str, str]) -> pd.DataFrame:
    """Per layer, whether r(t1, >=, 0.5) < r(t1, <=, 0.5) and r(t2, >=, 0.5) > r(t2, <=, 0.5)
    (paper eq. 41: each task is probed better on its own important half)."""
    wide = table.pivot_table(index="layer", columns=["task", "variant"], values="test_mse")
    t1, t2 = pair
    out = pd.DataFrame({f"r_{task}_{variant}": wide[(task, variant)] for task in pair for variant in HALVES})
    first, second = (f"r_{{}}_{variant}" for variant in HALVES)
    out[f"{t1}_better_on_own_half"] = out[first.format(t1)] < out[second.format(t1)]
    out[f"{t2}_better_on_own_half"] = out[first.format(t2)] > out[second.format(t2)]
    out["eq41_holds"] = out[f"{t1}_better_on_own_half"] & out[f"{t2}_better_on_own_half"]
    return out.reset_index()


def patching_figure(counts: pd.DataFrame, accuracy: pd.DataFrame, model_id: str, site: str):
    """Figure 5, one column per tau1; colour = the task u of the other prompt, solid = basic
    (B), dashed = swapped (S). Top: rho (pairs whose patched prediction equals the
    reference's unpatched one) per patched layer for the xi patch with its 95% band; the
    random patch of as many features thin dotted in the same colour, so that xi is read
    against it rather than against zero; the noop patch (source = base) as grey crosses, the
    agreement with no change at all. Bottom: the mean change in log p(r_NP) (dlogp), which
    moves before a greedy answer flips, for the xi patch with its band and the random patch
    dotted. `counts` is the patching rule's CSV; without controls it holds only xi rows."""
    tau1s = list(dict.fromkeys(counts["tau1"]))
    fig, grid = plt.subplots(2, len(tau1s), figsize=(5 * len(tau1s), 7.2), sharex=True, sharey="row", squeeze=False)
    n_pairs = int(counts["n_pairs"].iloc[0])
    kinds = set(counts["patch"])
    for column, tau1 in enumerate(tau1s):
        top, bottom = grid[0, column], grid[1, column]
        for (u, v), rows in counts[counts["tau1"] == tau1].groupby(["u", "v"]):
            rows = rows.sort_values("layer")
            colour, marker = TASK_COLOURS.get(u, "black"), "o" if v == "B" else "s"
            xi, random, noop = (rows[rows["patch"] == kind] for kind in ("xi", "random", "noop"))
            band(top, xi, "rho", colour, f"rho({tau1},{u},{v})", ("-" if v == "B" else "--") + marker)
            band(bottom, xi, "dlogp", colour, "_nolegend_", ("-" if v == "B" else "--") + marker)
            for ax, metric in ((top, "rho"), (bottom, "dlogp")):
                ax.plot(
                    random["layer"],
                    random[metric],
                    ":",
                    marker=marker,
                    markersize=2,
                    markerfacecolor="none",
                    linewidth=0.8,
                    color=colour,
                )
            top.plot(noop["layer"], noop["rho"], "x", color="grey", markersize=4)
        top.axhline(n_pairs, color="grey", linewidth=0.8)
        bottom.axhline(0, color="grey", linewidth=0.8, label="no change")
        if "random" in kinds:
            for ax in (top, bottom):
                ax.plot([], [], ":", color="black", linewidth=0.8, label="random features, as many (dotted)")
        if "noop" in kinds:
            top.plot([], [], "x", color="grey", label="noop: base patched with itself")
        ref = accuracy[(accuracy["prompt_set"] == "reference") & (accuracy["task"] == tau1)]
        finish_panel(top, f"tau1 = {tau1} (unpatched accuracy {ref['accuracy'].iloc[0]:.0%})", "")
        finish_panel(bottom, f"tau1 = {tau1}: change in log p(r_NP)", "patched layer")
    grid[1, 0].set_ylabel("mean dlogp (nats)")
    return finish_figure(
        fig,
        [grid[0, 0]],
        f"rho (of {n_pairs} pairs)",
        f"{model_id}, site {site}: predictions unchanged by patching half the features (bands: 95% intervals)",
    )
