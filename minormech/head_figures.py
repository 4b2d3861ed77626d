"""Figures of the head-level views (minormech.heads): layer x head heatmaps of the
log-probability increase, of knockouts and of per-head xi, and the attention of the top
heads to the examples' answers. Each returns (figure, table): the table is the CSV written
beside the figure.

Heatmap colour scales are robust: symmetric at the 98th percentile of |value|, so that a
few outlying heads (layer 0's, say) do not turn every other cell white; cells beyond the
limit saturate, carry their value as text, and the colour bar says where it clips."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from minormech.figures import INTERVALS, Style  # noqa: E402
from minormech.sites import HEAD_SITES  # noqa: E402
from minormech.uncertainty import bootstrap_interval  # noqa: E402

#: Heatmap columns: what each figure shows, with its colour-bar label.
HEATMAP_MEASURES = {
    "heads_increase": ("logprob_increase", "mean I = log p(a1 | x + head) - log p(a1 | x)"),
    "heads_knockout": ("knockout_dlogp", "mean change in log p(answer) when the head is knocked out"),
}
#: The percentile of |value| a heatmap's colour scale clips at.
ROBUST_PERCENTILE = 98
#: One style per top head of the attention figure: colour, line style and marker all differ.
HEAD_STYLES = (
    Style("tab:purple", "-", "o"),
    Style("tab:orange", "--", "s"),
    Style("tab:green", "-.", "^"),
    Style("tab:brown", ":", "D"),
    Style("tab:pink", "-", "v"),
    Style("tab:olive", "--", "P"),
)
#: Distance bins of the attention figure (equal counts).
DISTANCE_BINS = 5


def grid(table: pd.DataFrame, column: str) -> np.ndarray:
    """[layers, heads] of `column` from a per-(layer, head) table."""
    return table.pivot(index="layer", columns="head", values=column).to_numpy()


def robust_limit(*arrays: np.ndarray) -> float:
    """Symmetric colour limit: the 98th percentile of |value| over `arrays`, so that a single
    outlier cannot set the scale (the maximum when that percentile is 0; 1 when empty)."""
    values = np.abs(np.concatenate([np.ravel(np.asarray(a, dtype=float)) for a in arrays]))
    values = values[np.isfinite(values)]
    if not len(values):
        return 1.0
    limit = float(np.percentile(values, ROBUST_PERCENTILE))
    return limit if limit > 0 else float(values.max()) or 1.0


def plain(value: float) -> str:
    """A number as a reader writes it: 1090, 2.21, 0.0123 (never 1.09e+03)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def heatmap(
    ax, values: np.ndarray, layers: list[int], title: str, label: str, limit: float, xlabel: str = "query head"
) -> None:
    """One layer x head heatmap on the symmetric scale ±limit; cells beyond it saturate and
    show their value, and the colour bar (with arrows where it clips) says the limit."""
    image = ax.imshow(
        values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", origin="lower"
    )
    step = max(1, len(layers) // 10)
    ax.set_yticks(np.arange(len(layers))[::step], [str(layer) for layer in layers][::step])
    ax.set_xticks(np.arange(values.shape[1])[:: max(1, values.shape[1] // 16)])
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    low, high = bool(np.nanmin(values) < -limit), bool(np.nanmax(values) > limit)
    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get((low, high), "neither")
    bar = ax.figure.colorbar(image, ax=ax, location="bottom", extend=extend, aspect=30, pad=0.02)
    bar.set_label(f"{label}\nclipped at ±{plain(limit)} ({ROBUST_PERCENTILE}th percentile of |value|)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    for row, column in zip(*np.nonzero(np.abs(np.nan_to_num(values)) > limit)):
        ax.text(column, row, plain(values[row, column]), ha="center", va="center", fontsize=5.5, color="white")


def head_heatmap_figure(tables: dict[str, pd.DataFrame], figure: str, pair: tuple[str, str], model_id: str):
    """Three panels: the measure for each task of the pair (one shared robust scale, so the
    tasks compare) and their difference (its own robust scale: it is much smaller); blank
    panels with a note when the measure was not computed (heads.knockout: false)."""
    column, label = HEATMAP_MEASURES[figure]
    first, second = (tables[task] for task in pair)
    layers = sorted(first["layer"].unique().tolist())
    long = first[["layer", "head"]].copy()
    long[pair[0]], long[pair[1]] = first[column].to_numpy(), second[column].to_numpy()
    long[f"{pair[0]}-{pair[1]}"] = long[pair[0]] - long[pair[1]]
    for task, table in zip(pair, (first, second)):
        long[f"{task}_ci_low"], long[f"{task}_ci_high"] = (
            table[f"{column}_ci_low"].to_numpy(),
            table[f"{column}_ci_high"].to_numpy(),
        )
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.16 * len(layers) + 3.5), squeeze=False, layout="constrained")
    if long[pair[0]].isna().all():
        for ax in axes[0]:
            ax.axis("off")
        axes[0][1].text(0.5, 0.5, "not computed (heads.knockout: false)", ha="center", va="center")
    else:
        values = [grid(first, column), grid(second, column), grid(first, column) - grid(second, column)]
        limits = [robust_limit(values[0], values[1])] * 2 + [robust_limit(values[2])]
        for ax, v, title, limit in zip(axes[0], values, (pair[0], pair[1], f"{pair[0]} - {pair[1]}"), limits):
            heatmap(ax, v, layers, title, label, limit)
        axes[0][0].set_ylabel("layer")
    fig.suptitle(f"{model_id}: {label} (red > 0, blue < 0; the difference panel has its own scale)", fontsize=10)
    return fig, long


def attention_means(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """Mean attention per value of `key` with its 95% percentile-bootstrap interval over the
    rows (prompts) of that value; x is the value, or the bin's mean distance for bins."""
    out = []
    for value, group in rows.groupby(key):
        interval = bootstrap_interval(group["attention"].to_numpy())
        x = group["distance"].mean() if key == "distance_bin" else value
        out.append(
            {"x": float(x), "mean": float(interval.mean), "low": float(interval.low), "high": float(interval.high)}
        )
    return pd.DataFrame(out).sort_values("x")


def attention_entry(task: str, rank: int, rows: pd.DataFrame) -> dict:
    """One head's row of the attention table: its mean attention and Spearman correlations
    over all (prompt, example) rows."""
    entry = {
        "task": task,
        "rank": int(rank),
        "layer": int(rows["layer"].iloc[0]),
        "head": int(rows["head"].iloc[0]),
        "n_rows": len(rows),
        "mean_attention": float(rows["attention"].mean()),
    }
    for x in ("before_query", "distance"):
        entry[f"spearman_{x}"] = float(rows[x].corr(rows["attention"], method="spearman"))
    return entry


def attention_figure(rows: dict[str, pd.DataFrame], pair: tuple[str, str], model_id: str):
    """Per task, the attention of its top heads to each example's answer against the
    example's place before the query (1 = the last example; integer ticks) and against the
    distance of its x from the query's x (in equal-count bins), as means with 95% bars,
    heads dodged sideways and told apart by line style and marker; the legend gives each
    head's Spearman rho over all rows with its n."""
    fig, axes = plt.subplots(len(pair), 2, figsize=(14, 3.8 * len(pair)), squeeze=False, layout="constrained")
    correlations = []
    for r, task in enumerate(pair):
        table = rows[task].assign(before_query=lambda t: t["examples_in_prompt"] - t["example"])
        bins = min(DISTANCE_BINS, table["distance"].nunique())
        table["distance_bin"] = pd.qcut(table["distance"], bins, labels=False, duplicates="drop")
        heads = list(table.groupby("rank"))
        for i, (rank, head_rows) in enumerate(heads):
            entry = attention_entry(task, rank, head_rows)
            correlations.append(entry)
            style, offset = HEAD_STYLES[i % len(HEAD_STYLES)], 0.08 * (i - (len(heads) - 1) / 2)
            for c, (key, x) in enumerate((("before_query", "before_query"), ("distance_bin", "distance"))):
                means = attention_means(head_rows, key)
                spacing = float(np.median(np.diff(means["x"]))) if len(means) > 1 else 1.0
                rho = entry[f"spearman_{x}"]
                label = f"L{entry['layer']}H{entry['head']}: Spearman rho = {rho:+.2f} (n = {len(head_rows)})"
                axes[r][c].errorbar(
                    means["x"] + offset * spacing,
                    means["mean"],
                    yerr=[means["mean"] - means["low"], means["high"] - means["mean"]],
                    color=style.colour,
                    linestyle=style.line,
                    marker=style.marker,
                    markersize=4,
                    linewidth=1.2,
                    elinewidth=0.8,
                    capsize=2,
                    label=label,
                )
        for c, xlabel in enumerate(
            (
                "examples before the query (1 = the last)",
                f"distance of the example's x from the query's x (in {bins} equal-count bins)",
            )
        ):
            ax = axes[r][c]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{task}: attention to the answer")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        axes[r][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(
        f"{model_id}: attention from the last position to each example's answer, top heads by I "
        f"(means over prompts, {INTERVALS})",
        fontsize=10,
    )
    return fig, pd.DataFrame(correlations)


def head_xi_figure(table: pd.DataFrame, pair: tuple[str, str], model_id: str):
    """xi summed within each head's slice, one panel per site (q: query heads, k/v:
    key/value heads), on one robust colour scale. Red = more important for the pair's
    first task."""
    sites = [site for site in HEAD_SITES if site in set(table["site"])]
    size = (5 * max(1, len(sites)), 0.16 * table["layer"].nunique() + 3.5)
    fig, axes = plt.subplots(1, max(1, len(sites)), figsize=size, squeeze=False, layout="constrained")
    if not sites:
        axes[0][0].axis("off")
        axes[0][0].text(
            0.5, 0.5, f"no analysed site has head slices (sites {', '.join(HEAD_SITES)})", ha="center", va="center"
        )
    else:
        limit = robust_limit(table["xi_sum"].to_numpy())
        layers = sorted(table["layer"].unique().tolist())
        for ax, site in zip(axes[0], sites):
            heatmap(
                ax,
                grid(table[table["site"] == site], "xi_sum"),
                layers,
                f"site {site}",
                f"xi summed per head ({pair[0]} red, {pair[1]} blue)",
                limit,
                "query head" if site == "q" else "key/value head",
            )
        axes[0][0].set_ylabel("layer")
    fig.suptitle(f"{model_id}: xi = rank(FA_{pair[0]}) - rank(FA_{pair[1]}) per head", fontsize=10)
    return fig, table
