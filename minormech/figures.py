"""The paper's figures (§6). Every figure is written as PDF and PNG with its numbers as a
CSV beside it, so a reader can check a curve without rerunning anything.

Design rules shared by every figure, so that each reads in print and in grey scale:
series differ by line style and marker as well as colour; markers sit only on measured
layers and lines join only layers one apart (a line never suggests a value at a layer
that was not measured); every axis has its own layer ticks; legends sit outside the data;
the one series a panel is about gets a 95% band, the others 95% error bars, so that
intervals do not merge into one mass; references far from the data (the least-squares
ceiling) are written as a note instead of stretching the axis to them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from minormech.ranking import HALVES, QUARTERS  # noqa: E402
from minormech.sites import QUERY_HEADS, SITE_TABLE  # noqa: E402

TASK_COLOURS = {"LR": "tab:red", "MD": "tab:blue"}
TASK_MARKERS = {"LR": "o", "MD": "s"}
TASK_LINES = {"LR": "-", "MD": "--"}
BASELINE_COLOUR = "0.35"
INTERVALS = "95% intervals"


@dataclass(frozen=True)
class Style:
    """How one series is drawn: colour, line style ("none": markers only), marker, whether
    the marker is filled (hollow markers mark controls) and whether its error bars are
    dashed (figure 5's swapped settings)."""

    colour: str
    line: str
    marker: str
    filled: bool = True
    dashed_bars: bool = False


#: The random-init model (§6.1 control): black, dash-dot, hollow triangles.
RANDOM_INIT = Style("black", "-.", "^", filled=False)
#: The ridge readouts beside the probe (minormech.ridge_probes): grey, dotted, hollow markers.
RIDGE_STYLES = {
    "ridge_mean_mse": (Style("0.45", ":", "D", filled=False), "ridge on mean-pooled activations"),
    "ridge_last_mse": (Style("0.45", ":", "v", filled=False), "ridge on the last token"),
}


def task_style(task: str) -> Style:
    return Style(TASK_COLOURS.get(task, "black"), TASK_LINES.get(task, "-"), TASK_MARKERS.get(task, "o"))


def save_figure(fig, pdf: str | Path, png: str | Path) -> None:
    fig.savefig(pdf, bbox_inches="tight")
    fig.savefig(png, bbox_inches="tight", dpi=150)
    plt.close(fig)


# -- drawing helpers ---------------------------------------------------------------------


def runs(layers) -> list[np.ndarray]:
    """Index runs of sorted layers one apart: lines join only those, so a line never spans
    an unmeasured layer."""
    layers = np.asarray(layers)
    if len(layers) == 0:
        return []
    return np.split(np.arange(len(layers)), np.flatnonzero(np.diff(layers) != 1) + 1)


def legend_entry(ax, style: Style, label: str, linewidth: float = 1.4) -> None:
    """An empty series in `ax` whose legend handle shows both the line style and the marker."""
    if label and not label.startswith("_"):
        ax.add_line(proxy(style, label, linewidth))


def proxy(style: Style, label: str, linewidth: float = 1.4) -> Line2D:
    """A legend handle showing both the line style and the marker of `style`."""
    face = style.colour if style.filled else "white"
    return Line2D(
        [],
        [],
        color=style.colour,
        linestyle=style.line,
        marker=style.marker,
        markerfacecolor=face,
        label=label,
        linewidth=linewidth,
        markersize=5,
    )


def draw(
    ax,
    rows: pd.DataFrame,
    column: str,
    style: Style,
    label: str,
    interval: str | None = "band",
    dodge: float = 0.0,
    linewidth: float = 1.4,
    zorder: float = 2,
) -> None:
    """A per-layer series of `column`: markers on every measured layer, lines only between
    layers one apart, and its 95% interval (columns <column>_ci_low/high) as a band
    ("band"; isolated layers get a bar), as error bars ("bars") or not at all (None).
    `dodge` shifts the series sideways so that bars of series on the same layers do not
    hide each other."""
    rows = rows.dropna(subset=[column]).sort_values("layer")
    layers = rows["layer"].to_numpy()
    x, y = layers.astype(float) + dodge, rows[column].to_numpy(float)
    ci = None
    if interval is not None and f"{column}_ci_low" in rows and rows[f"{column}_ci_low"].notna().any():
        ci = rows[f"{column}_ci_low"].to_numpy(float), rows[f"{column}_ci_high"].to_numpy(float)
    barred = np.zeros(len(x), bool)
    for run in runs(layers):
        if len(run) > 1 and style.line != "none":
            ax.plot(x[run], y[run], linestyle=style.line, color=style.colour, linewidth=linewidth, zorder=zorder)
        if ci is not None and interval == "band" and len(run) > 1:
            ax.fill_between(x[run], ci[0][run], ci[1][run], color=style.colour, alpha=0.18, lw=0, zorder=zorder - 1)
        else:
            barred[run] = True
    if ci is not None and barred.any():
        error_bars(ax, x[barred], y[barred], ci[0][barred], ci[1][barred], style, zorder)
    face = style.colour if style.filled else "white"
    ax.plot(
        x,
        y,
        linestyle="none",
        marker=style.marker,
        markersize=4,
        color=style.colour,
        markerfacecolor=face,
        zorder=zorder + 0.5,
    )
    legend_entry(ax, style, label, linewidth)


def error_bars(
    ax, x: np.ndarray, y: np.ndarray, low: np.ndarray, high: np.ndarray, style: Style, zorder: float
) -> None:
    """Thin 95% error bars in the series' colour, dashed for `style.dashed_bars`."""
    bars = ax.errorbar(
        x,
        y,
        yerr=[y - low, high - y],
        fmt="none",
        ecolor=style.colour,
        elinewidth=0.8,
        capsize=1.5,
        alpha=0.65,
        zorder=zorder,
    )
    if style.dashed_bars:
        bars.lines[2][0].set_linestyle("--")


def layer_axis(ax, title: str, xlabel: str = "layer") -> None:
    """Integer layer ticks on every panel (never hidden by a shared axis) and a light grid."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelbottom=True)
    ax.grid(alpha=0.3)


def zero_line(ax, label: str | None = None) -> None:
    ax.axhline(0, color="0.5", linewidth=0.8, zorder=1, label=label or "_nolegend_")


def row_legend(container, axes, ncol: int = 3) -> None:
    """One legend below a row of panels (outside the data), each label once: the series of
    one panel only (e.g. each task's probe) first, then those of every panel, then the
    notes on marker fill and shading."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    shared = set.intersection(*(set(ax.get_legend_handles_labels()[1]) for ax in axes)) if axes else set()
    notes = ("filled", "hollow", "shaded")
    entries = dict(sorted(entries.items(), key=lambda item: (item[0].startswith(notes), item[0] in shared)))
    if entries:
        container.legend(
            list(entries.values()), list(entries), loc="outside lower center", ncol=ncol, fontsize=7.5, frameon=False
        )


def reference_value(rows: pd.DataFrame, column: str) -> tuple[float, float, float] | None:
    """(value, low, high) of a per-task constant such as the baseline; None when absent."""
    if column not in rows or rows[column].isna().all():
        return None
    first = rows.dropna(subset=[column]).iloc[0]
    return (
        float(first[column]),
        float(first.get(f"{column}_ci_low", np.nan)),
        float(first.get(f"{column}_ci_high", np.nan)),
    )


def baseline_reference(ax, rows: pd.DataFrame) -> None:
    """The training-mean baseline (§6.1): a dashed line, its 95% interval as a bar just
    outside the right spine (a band would cover the probe's)."""
    reference = reference_value(rows, "baseline_mse")
    if reference is None:
        return
    value, low, high = reference
    ax.axhline(value, color=BASELINE_COLOUR, linestyle="--", linewidth=1, zorder=1)
    legend_entry(
        ax,
        Style(BASELINE_COLOUR, "--", "none"),
        "training-mean baseline (dashed; bar at the right edge: its 95% interval)",
        1,
    )
    if np.isfinite(low) and np.isfinite(high):
        edge = ax.get_yaxis_transform()
        ax.plot(
            [1.015, 1.015],
            [low, high],
            color=BASELINE_COLOUR,
            linewidth=2.5,
            transform=edge,
            clip_on=False,
            solid_capstyle="butt",
            label="_nolegend_",
        )
        ax.plot(
            [1.015], [value], marker="_", markersize=9, color="black", transform=edge, clip_on=False, label="_nolegend_"
        )
        ax.update_datalim([[rows["layer"].min(), low], [rows["layer"].min(), high]])
        ax.autoscale_view()


def ceiling_note(ax, rows: pd.DataFrame) -> None:
    """The least-squares ceiling (§6.1), near 0 while the probes sit at 30-50: written as a
    note in a strip added below the data, with a marker at the axis edge, instead of a line
    that would push the data into the top of the panel. Drawn as a dotted line only when it
    lies inside the data's range anyway."""
    reference = reference_value(rows, "ceiling_mse")
    if reference is None:
        return
    value, low, high = reference
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom - 0.14 * (top - bottom), top)
    text = f"least-squares ceiling: {value:.2f} [{low:.2f}, {high:.2f}]"
    if bottom <= value <= top:
        ax.axhline(value, color="tab:green", linestyle=":", linewidth=1.2, zorder=1)
        text += " (dotted line)"
    else:
        where = "below" if value < bottom else "above"
        text = f"{'▼' if where == 'below' else '▲'} {text}, {where} the axis"
    ax.text(
        0.015,
        0.025,
        text,
        transform=ax.transAxes,
        fontsize=7,
        ha="left",
        va="bottom",
        bbox={"facecolor": "white", "edgecolor": "0.7", "linewidth": 0.5, "alpha": 0.9},
    )


def row_grid(fig, n_rows: int, n_columns: int, titles: list[str]):
    """One subfigure per row (its question as its title, its legend below it), each with
    `n_columns` panels; returns the subfigures and the [row][column] axes."""
    rows = fig.subfigures(n_rows, 1, squeeze=False)[:, 0]
    axes = []
    for subfigure, title in zip(rows, titles):
        subfigure.suptitle(title, fontsize=9.5)
        axes.append(list(subfigure.subplots(1, n_columns, squeeze=False)[0]))
    return list(rows), axes


# -- figure 1 ----------------------------------------------------------------------------


def probe_curves_figure(table: pd.DataFrame, model_id: str, site: str, random_init: pd.DataFrame | None = None):
    """Figure 1 (§6.1): one column per task, one row per question. Top: probe test MSE per
    layer (mean over seeds, 95% band) against the same probe on the random-init model (95%
    bars), the ridge readouts of the pooled activations (when the table has them), the
    training-mean baseline and, as a note, the least-squares ceiling. Middle:
    the paired gain over the baseline (baseline MSE - probe MSE on the same test prompts),
    probe and random-init. Bottom, with the control task: selectivity = task gain -
    control-task gain. The control target pi(w) has its own baseline, so selectivity is
    left in MSE units and labelled "compare within a task only" instead of normalised."""
    tasks = list(dict.fromkeys(table["task"]))
    control = {task: None if random_init is None else random_init[random_init["task"] == task] for task in tasks}
    titles = [
        f"Does the probe decode w? Test MSE per layer, lower = better ({INTERVALS})",
        "Does it beat the baseline and an untrained network? Gain = baseline MSE - probe MSE on the same test "
        "prompts (above 0 = better than the baseline)",
    ]
    if "selectivity" in table and table["selectivity"].notna().any():
        titles.append(
            "Does it read w rather than remember weights? Selectivity = task gain - control-task gain\n"
            "(the control target has its own baseline: compare within a task only, not across tasks)"
        )
    fig = plt.figure(figsize=(5.6 * len(tasks), 3.9 * len(titles)), layout="constrained")
    rows, grid = row_grid(fig, len(titles), len(tasks), titles)
    for column, task in enumerate(tasks):
        own, other = table[table["task"] == task], control[task]
        with_control = other is not None and len(other) > 0
        probe_panel(grid[0][column], own, other if with_control else None, task, site)
        for row, name in enumerate(("gain", "selectivity")[: len(titles) - 1], start=1):
            ax = grid[row][column]
            draw(ax, own, name, task_style(task), f"{task} probe", "band", zorder=3)
            if with_control and name in other:
                draw(ax, other, name, RANDOM_INIT, "same probe, random-init model", "bars", 0.2, 1.0)
            zero_line(ax)
            layer_axis(ax, f"{task}: {name}")
    for row, label in zip(grid, ("test MSE", "baseline MSE - probe MSE", "task gain - control gain")):
        row[0].set_ylabel(label)
    for subfigure, axes in zip(rows, grid):
        row_legend(subfigure, axes)
    fig.suptitle(f"{model_id}, site {site}: attention-pooled probes of the task weights w (§6.1)")
    return fig


def probe_panel(ax, rows: pd.DataFrame, control_rows: pd.DataFrame | None, task: str, site: str) -> None:
    """Figure 1's top panel of one task: the probe (band, drawn on top so that a close
    random-init curve cannot hide it), the random-init model (bars), the ridge readouts
    of the pooled activations (does attention pooling read more than a linear readout?),
    the references."""
    draw(ax, rows, "test_mse", task_style(task), f"{task} probe (mean over seeds)", "band", zorder=3)
    if control_rows is not None:
        draw(ax, control_rows, "test_mse", RANDOM_INIT, "same probe, random-init model", "bars", 0.2, 1.0)
    for column, (style, label) in RIDGE_STYLES.items():
        if column in rows and rows[column].notna().any():
            draw(ax, rows, column, style, f"{label} (intervals in the CSV)", None, linewidth=1.0)
    baseline_reference(ax, rows)
    layer_axis(ax, f"{task} weights, site {site}")
    ceiling_note(ax, rows)


# -- figure 2 ----------------------------------------------------------------------------


def random_rank_reference(d: int) -> tuple[float, float]:
    """Mean |xi| over d features when the two rankings are independent uniformly random
    permutations, and its standard deviation: sum |xi| is then Spearman's footrule, of mean
    (d^2 - 1) / 3 and variance (d + 1)(2 d^2 + 7) / 45 (Diaconis and Graham 1977)."""
    return (d * d - 1) / (3 * d), float(np.sqrt((d + 1) * (2 * d * d + 7) / 45) / d)


def head_boundaries(ax, d: int, site: str, head_size: int | None) -> None:
    """Thin vertical lines between the heads of a site with per-head slices (q: query
    heads, k and v: key/value heads; features are head-major), head numbers on top."""
    entry = SITE_TABLE.get(site)
    if head_size is None or entry is None or entry.heads is None or d % head_size or d // head_size < 2:
        return
    n_heads = d // head_size
    for boundary in range(1, n_heads):
        ax.axvline(boundary * head_size - 0.5, color="black", linewidth=0.8)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(h + 0.5) * head_size - 0.5 for h in range(n_heads)], [str(h) for h in range(n_heads)])
    kind = "query" if entry.heads == QUERY_HEADS else "key/value"
    top.set_xlabel(f"{kind} head (black lines: head boundaries, {head_size} features each)", fontsize=8)


def xi_heatmap_figure(
    xi: np.ndarray, layers: list[int], model_id: str, site: str, pair: tuple[str, str], head_size: int | None = None
):
    """Figure 2 (§6.2, eq. 34): xi per layer (rows) and feature (columns), red = larger rank
    for the first task (more important for it), blue = for the second; the colour bar has
    numeric ticks. With `head_size` (features per head), head boundaries are drawn for the
    sites with head slices. A side panel says what unrelated maps look like: the per-layer
    mean |xi| against its value for two independent random rankings, (d^2 - 1) / (3d),
    with that value's 95% range; below it, the two tasks rank features more alike than
    chance."""
    d = xi.shape[1]
    fig = plt.figure(figsize=(12, 0.2 * len(layers) + 3.4), layout="constrained")
    heat, side = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [5, 1.2]})
    image = heat.imshow(
        xi, aspect="auto", cmap="RdBu_r", vmin=-(d - 1), vmax=d - 1, interpolation="nearest", origin="lower"
    )
    step = max(1, len(layers) // 10)
    heat.set_yticks(np.arange(len(layers))[::step], [str(layer) for layer in layers][::step])
    heat.set_xlabel("feature")
    heat.set_ylabel("layer")
    head_boundaries(heat, d, site, head_size)
    bar = fig.colorbar(image, ax=heat, location="bottom", shrink=0.7, aspect=45, pad=0.01)
    bar.set_ticks(np.round(np.linspace(-(d - 1), d - 1, 7)).astype(int))
    bar.set_label(
        f"xi = rank(FA_{pair[0]}) - rank(FA_{pair[1]}):  <- more important for {pair[1]} (blue)   |   "
        f"more important for {pair[0]} (red) ->"
    )
    random_rank_panel(side, np.abs(xi).mean(axis=1), layers, d)
    heat.set_title(f"site {site}: rank difference of every feature", fontsize=9)
    fig.suptitle(f"{model_id}: which features matter more for {pair[0]} (red) or {pair[1]} (blue)? (§6.2)")
    return fig


def random_rank_panel(ax, mean_abs: np.ndarray, layers: list[int], d: int) -> None:
    """Figure 2's side panel: mean |xi| per layer against two independent random rankings."""
    expected, sd = random_rank_reference(d)
    ax.axvspan(expected - 1.96 * sd, expected + 1.96 * sd, color="0.85", zorder=0)
    ax.axvline(expected, color="black", linestyle="--", linewidth=1)
    positions = np.arange(len(layers))
    for run in runs(layers):
        ax.plot(mean_abs[run], positions[run], color="black", linewidth=1)
    ax.plot(mean_abs, positions, linestyle="none", marker="o", markersize=3.5, color="black")
    ax.set_xlabel("mean |xi| over features")
    ax.set_title(
        f"vs. unrelated rankings\n(dashed: {expected:.1f} = (d²-1)/(3d), d = {d};\ngrey: its 95% range)", fontsize=8
    )
    ax.grid(alpha=0.3)
    ax.tick_params(labelleft=True)


# -- figures 3 and 4 ---------------------------------------------------------------------


def variant_label(variant: str, pair: tuple[str, str]) -> str:
    """Plain words for a filter variant (minormech.ranking, eq. 35): (>=, h) keeps the
    fraction h most important for the first task, (<=, h) the fraction 1 - h most
    important for the second; e.g. le0.75 = "features most important for MD (top quarter, 25%)"."""
    first = variant.startswith("ge")
    h = float(variant[2:])
    task, fraction = (pair[0], h) if first else (pair[1], 1 - h)
    words = {0.5: "top half", 0.25: "top quarter"}.get(round(fraction, 6), "top")
    return f"features most important for {task} ({words}, {fraction:.0%})"


def variant_style(variant: str, pair: tuple[str, str]) -> Style:
    return replace(
        task_style(pair[0] if variant.startswith("ge") else pair[1]), line="-" if variant.startswith("ge") else "--"
    )


def filtered_probe_figure(
    table: pd.DataFrame, unfiltered: pd.DataFrame, variants: list[str], model_id: str, site: str, pair: tuple[str, str]
):
    """Figures 3 and 4 (§6.3): filtered probe test MSE per layer, one column per probe task,
    one series per filter variant with 95% bars (dodged sideways), the unfiltered probe
    (thin grey), the baseline and the least-squares ceiling (as a note). A second row draws
    the paired difference the claim rests on, per layer with its 95% interval; filled
    markers where the interval lies entirely on the predicted side of 0: figure 3 eq. 41's
    d = MSE(first task's half) - MSE(second task's half), predicted below 0 for the first
    task's probe and above 0 for the second's; figure 4 each task's own quarter minus its
    own half, predicted above 0 where the quarter loses what the half had (H3)."""
    tasks = list(dict.fromkeys(table["task"]))
    differences = difference_panels(table, variants, pair)
    titles = [f"Probes on a subset of the features: test MSE per layer, lower = better ({INTERVALS})"]
    if differences:
        titles.append(DIFFERENCE_TITLES[3 if set(variants) == set(HALVES) else 4].format(*pair))
    fig = plt.figure(figsize=(5.6 * len(tasks), 4.1 * len(titles)), layout="constrained")
    rows, grid = row_grid(fig, len(titles), len(tasks), titles)
    for column, task in enumerate(tasks):
        ax = grid[0][column]
        reference = unfiltered[unfiltered["task"] == task]
        draw(ax, reference, "test_mse", Style("0.55", ":", "."), "all features (unfiltered probe)", None, linewidth=1)
        for i, variant in enumerate(variants):
            rows_v = table[(table["task"] == task) & (table["variant"] == variant)]
            dodge = 0.18 * (i - (len(variants) - 1) / 2)
            draw(
                ax,
                rows_v,
                "test_mse",
                variant_style(variant, pair),
                variant_label(variant, pair),
                "bars",
                dodge,
                1.2,
                3,
            )
        baseline_reference(ax, table[table["task"] == task])
        layer_axis(ax, f"probe of the {task} weights, site {site}")
        ceiling_note(ax, table[table["task"] == task])
        if differences:
            rows_t = table[(table["task"] == task) & (table["variant"] == variants[0])]
            difference_panel(grid[1][column], rows_t, *differences[task], task)
    grid[0][0].set_ylabel("test MSE")
    if differences:
        grid[1][0].set_ylabel("paired MSE difference")
    for subfigure, axes in zip(rows, grid):
        row_legend(subfigure, axes, ncol=2)
    fig.suptitle(f"{model_id}, site {site}: probes on the features xi ranks most important for each task (§6.3)")
    return fig


DIFFERENCE_TITLES = {
    3: "Eq. 41: is each task probed better on its own half? Paired d = MSE on {0}'s half - MSE on {1}'s half, "
    f"same test prompts ({INTERVALS})",
    4: "H3: does the top quarter lose what the half had? Paired MSE on the task's own quarter - MSE on its own "
    f"half ({INTERVALS})",
}


def difference_panels(
    table: pd.DataFrame, variants: list[str], pair: tuple[str, str]
) -> dict[str, tuple[str, int, str]]:
    """For a filtered figure: task -> (column, predicted sign, claim) of its paired
    difference; empty when the table has no such column (neither halves nor quarters)."""
    if set(variants) == set(HALVES) and "halves_difference" in table:
        return {task: ("halves_difference", sign, "eq. 41") for task, sign in zip(pair, (-1, 1))}
    if set(variants) == set(QUARTERS) and "quarter_minus_half_ge" in table:
        return {task: (f"quarter_minus_half_{own}", 1, "H3") for task, own in zip(pair, ("ge", "le"))}
    return {}


def difference_panel(ax, rows: pd.DataFrame, column: str, sign: int, claim: str, task: str) -> None:
    """A paired difference per layer with 95% bars; filled markers where the whole interval
    lies on the side of 0 that `claim` predicts (`sign`), hollow elsewhere."""
    style = task_style(task)
    draw(ax, rows, column, replace(style, filled=False), f"{task} probe: paired difference", "bars", zorder=3)
    low, high = rows[f"{column}_ci_low"], rows[f"{column}_ci_high"]
    hits = rows[(low > 0) if sign > 0 else (high < 0)]
    ax.plot(
        hits["layer"], hits[column], linestyle="none", marker=style.marker, markersize=4, color=style.colour, zorder=4
    )
    legend_entry(ax, Style("black", "none", "o"), "filled: 95% interval entirely on the predicted side of 0")
    legend_entry(ax, Style("black", "none", "o", filled=False), "hollow: interval includes 0 or lies on the other side")
    zero_line(ax)
    side = "above" if sign > 0 else "below"
    bottom, top = ax.get_ylim()
    ax.axhspan(0, top if sign > 0 else bottom, color="0.92", zorder=0, label=f"shaded: the side of 0 {claim} predicts")
    ax.set_ylim(bottom, top)
    layer_axis(ax, f"{task} probe ({claim} predicts {side} 0)")


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


# -- figure 5 ----------------------------------------------------------------------------

PATCH_KINDS = ("xi", "random", "noop")
SETTING_MARKERS = ("o", "s", "^", "D", "v", "P")


def patching_styles(counts: pd.DataFrame) -> dict[tuple[str, str], Style]:
    """(u, v) -> style: colour = u, marker = (u, v) (so u reads in grey scale too), solid
    error bars for B (basic), dashed for S (swapped)."""
    settings = sorted(set(zip(counts["u"], counts["v"])))
    return {
        (u, v): Style(
            TASK_COLOURS.get(u, "black"),
            "-" if v == "B" else "--",
            SETTING_MARKERS[i % len(SETTING_MARKERS)],
            dashed_bars=v != "B",
        )
        for i, (u, v) in enumerate(settings)
    }


def patching_figure(counts: pd.DataFrame, accuracy: pd.DataFrame, model_id: str, site: str):
    """Figure 5 (§6.4), one column per tau1. Top: rho (pairs whose patched prediction equals
    the reference's unpatched one) per patched layer; bottom: the mean change in log p(r_NP)
    (dlogp), which moves before a greedy answer flips. Only measured layers get markers,
    each with its 95% error bar, and no line joins layers that are not one apart. Per layer
    the settings sit side by side: filled = the xi patch, hollow = the random patch of as
    many features (xi is read against it rather than against zero), x = the noop patch
    (source = base). `counts` is the patching rule's CSV; without controls it holds only xi
    rows."""
    tau1s = list(dict.fromkeys(counts["tau1"]))
    fig = plt.figure(figsize=(5.6 * len(tau1s), 7.6), layout="constrained")
    grid = fig.subplots(2, len(tau1s), sharey="row", squeeze=False)
    n_pairs = int(counts["n_pairs"].iloc[0])
    styles = patching_styles(counts)
    for column, tau1 in enumerate(tau1s):
        top, bottom = grid[0, column], grid[1, column]
        rows = counts[counts["tau1"] == tau1]
        patching_panels(top, bottom, rows, styles)
        top.axhline(n_pairs, color="0.5", linewidth=0.8, zorder=1)
        zero_line(bottom)
        ref = accuracy[(accuracy["prompt_set"] == "reference") & (accuracy["task"] == tau1)]
        for ax, title in (
            (top, f"unpatched accuracy {ref['accuracy'].iloc[0]:.0%}"),
            (bottom, "change in log p(r_NP)"),
        ):
            layer_axis(ax, f"tau1 = {tau1}: {title}", "patched layer")
            ax.set_xticks(sorted(set(rows["layer"])))
    grid[0, 0].set_ylabel(f"rho: pairs keeping r_NP (of {n_pairs})")
    grid[1, 0].set_ylabel("mean dlogp (nats)")
    fig.legend(
        handles=patching_legend(styles, set(counts["patch"])),
        loc="outside lower center",
        ncol=3,
        fontsize=7.5,
        frameon=False,
    )
    fig.suptitle(f"{model_id}, site {site}: do predictions survive patching half the features? (§6.4; {INTERVALS})")
    return fig


def patching_panels(top, bottom, rows: pd.DataFrame, styles: dict[tuple[str, str], Style]) -> None:
    """The rho and dlogp series of one tau1, dodged: per setting its xi, random and noop
    patch side by side around each measured layer."""
    layers = sorted(set(rows["layer"]))
    step = min(np.diff(layers)) if len(layers) > 1 else 1
    slots = [(setting, kind) for setting in styles for kind in PATCH_KINDS if kind in set(rows["patch"])]
    width = 0.55 * step
    for i, ((u, v), kind) in enumerate(slots):
        series = rows[(rows["u"] == u) & (rows["v"] == v) & (rows["patch"] == kind)]
        if series.empty:
            continue
        dodge = width * ((i + 0.5) / len(slots) - 0.5)
        style = styles[(u, v)]
        if kind == "random":
            style = replace(style, filled=False)
        if kind == "noop":
            style = Style("0.35", "none", "x")
        for ax, metric in ((top, "rho"), (bottom, "dlogp")):
            if kind != "noop" or metric == "rho":
                draw(ax, series, metric, style, "_nolegend_", "bars", dodge, 0.8)


def patching_legend(styles: dict[tuple[str, str], Style], kinds: set[str]) -> list[Line2D]:
    """Legend of figure 5: the settings, then what B/S, filled/hollow and x mean."""
    handles = [proxy(style, f"u = {u} (other prompt's task), {v}") for (u, v), style in styles.items()]
    handles.append(Line2D([], [], color="black", label="B = basic: base R_i, source P_i (solid bars)"))
    handles.append(
        Line2D([], [], color="black", linestyle="--", label="S = swapped: base P_i, source R_i (dashed bars)")
    )
    handles.append(proxy(Style("black", "none", "o"), "filled: the xi-selected half of the features"))
    if "random" in kinds:
        handles.append(proxy(Style("black", "none", "o", filled=False), "hollow: random features, as many"))
    if "noop" in kinds:
        handles.append(proxy(Style("0.35", "none", "x"), "x: noop, base patched with itself"))
    handles.append(Line2D([], [], color="0.5", linewidth=0.8, label="grey line: all pairs (top), no change (bottom)"))
    return handles
