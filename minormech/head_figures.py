"""Figures of the head-level views (minormech.heads): layer x head heatmaps of the
log-probability increase, of knockouts and of per-head xi, and the attention of the top
heads to the examples' answers. Each returns (figure, table): the table is the CSV written
beside the figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from minormech.sites import HEAD_SITES  # noqa: E402

#: Heatmap columns: what each figure shows, with its colour-bar label.
HEATMAP_MEASURES = {
    "heads_increase": ("logprob_increase", "mean I = log p(a1 | x + head) - log p(a1 | x)"),
    "heads_knockout": ("knockout_dlogp", "mean change in log p(answer) when the head is knocked out"),
}


def grid(table: pd.DataFrame, column: str) -> np.ndarray:
    """[layers, heads] of `column` from a per-(layer, head) table."""
    return table.pivot(index="layer", columns="head", values=column).to_numpy()


def heatmap(
    ax, values: np.ndarray, layers: list[int], title: str, label: str, limit: float, xlabel: str = "query head"
) -> None:
    image = ax.imshow(
        values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", origin="lower"
    )
    step = max(1, len(layers) // 10)
    ax.set_yticks(np.arange(len(layers))[::step], [str(l) for l in layers][::step])
    ax.set_xticks(np.arange(values.shape[1])[:: max(1, values.shape[1] // 16)])
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    plt.colorbar(image, ax=ax).set_label(label, fontsize=7)


def head_heatmap_figure(tables: dict[str, pd.DataFrame], figure: str, pair: tuple[str, str], model_id: str):
    """Three panels: the measure for each task of the pair and their difference; blank
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
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.16 * len(layers) + 2.5), squeeze=False)
    if long[pair[0]].isna().all():
        for ax in axes[0]:
            ax.axis("off")
        axes[0][1].text(0.5, 0.5, "not computed (heads.knockout: false)", ha="center", va="center")
    else:
        values = [grid(first, column), grid(second, column), grid(first, column) - grid(second, column)]
        limit = max(float(np.nanmax(np.abs(v))) for v in values) or 1.0
        for ax, v, title in zip(axes[0], values, (pair[0], pair[1], f"{pair[0]} - {pair[1]}")):
            heatmap(ax, v, layers, title, label, limit)
        axes[0][0].set_ylabel("layer")
    fig.suptitle(f"{model_id}: {label} (red = larger, blue = smaller)", fontsize=10)
    fig.tight_layout()
    return fig, long


def attention_figure(rows: dict[str, pd.DataFrame], pair: tuple[str, str], model_id: str):
    """Per task, the attention of its top heads to each example's answer against the
    example's place before the query (1 = the last example) and against the distance of its
    x from the query's x, with Spearman correlations in the legend and the table."""
    fig, axes = plt.subplots(len(pair), 2, figsize=(11, 3.4 * len(pair)), squeeze=False)
    correlations = []
    for r, task in enumerate(pair):
        table = rows[task].assign(before_query=lambda t: t["examples_in_prompt"] - t["example"])
        for rank, head_rows in table.groupby("rank"):
            layer, head = int(head_rows["layer"].iloc[0]), int(head_rows["head"].iloc[0])
            entry = {
                "task": task,
                "rank": int(rank),
                "layer": layer,
                "head": head,
                "n_rows": len(head_rows),
                "mean_attention": float(head_rows["attention"].mean()),
            }
            for c, x in enumerate(("before_query", "distance")):
                rho = head_rows[x].corr(head_rows["attention"], method="spearman")
                entry[f"spearman_{x}"] = float(rho)
                mean = head_rows.groupby(x)["attention"].mean()
                style = "-o" if x == "before_query" else "o"  # distances are nearly all distinct: points, not a curve
                axes[r][c].plot(
                    mean.index, mean.to_numpy(), style, markersize=3, label=f"L{layer}H{head} (rho {rho:+.2f})"
                )
            correlations.append(entry)
        for c, xlabel in enumerate(
            ("examples before the query (1 = the last)", "distance of the example's x from the query's x")
        ):
            axes[r][c].set_xlabel(xlabel)
            axes[r][c].set_ylabel(f"{task}: attention to the answer")
            axes[r][c].grid(alpha=0.3)
            axes[r][c].legend(fontsize=7)
    fig.suptitle(
        f"{model_id}: attention from the last position to each example's answer, "
        "top heads by I (mean over prompts per x value)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig, pd.DataFrame(correlations)


def head_xi_figure(table: pd.DataFrame, pair: tuple[str, str], model_id: str):
    """xi summed within each head's slice, one panel per site (q: query heads, k/v:
    key/value heads). Red = more important for the pair's first task."""
    sites = [site for site in HEAD_SITES if site in set(table["site"])]
    fig, axes = plt.subplots(
        1, max(1, len(sites)), figsize=(5 * max(1, len(sites)), 0.16 * table["layer"].nunique() + 2.5), squeeze=False
    )
    if not sites:
        axes[0][0].axis("off")
        axes[0][0].text(
            0.5, 0.5, f"no analysed site has head slices (sites {', '.join(HEAD_SITES)})", ha="center", va="center"
        )
    else:
        limit = float(table["xi_sum"].abs().max()) or 1.0
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
    fig.tight_layout()
    return fig, table
