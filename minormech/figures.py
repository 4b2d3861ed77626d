"""The paper's figures (§6). Every figure is written as PDF and PNG with its numbers as a
CSV beside it, so a reader can check a curve without rerunning anything."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

TASK_COLOURS = {"LR": "tab:red", "MD": "tab:blue"}


def save_figure(fig, pdf: str | Path, png: str | Path) -> None:
    fig.savefig(pdf, bbox_inches="tight")
    fig.savefig(png, bbox_inches="tight", dpi=150)
    plt.close(fig)


def probe_curves_figure(table: pd.DataFrame, model_id: str, site: str):
    """Figure 1: probe test MSE per layer, one panel per task, with the training-mean
    baseline as a dashed line. `table` has columns task, layer, test_mse, baseline_mse."""
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = table[table["task"] == task].sort_values("layer")
        ax.plot(rows["layer"], rows["test_mse"], marker="o", color=TASK_COLOURS.get(task, "black"), label=f"probe ({task})")
        baseline = rows["baseline_mse"].iloc[0]
        ax.axhline(baseline, linestyle="--", color="grey", label=f"training-mean baseline ({baseline:.2f})")
        ax.set_title(f"{task}: probe on site {site}")
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test MSE")
    fig.suptitle(f"{model_id}: probe test MSE per layer (lower = weights better decodable)")
    fig.tight_layout()
    return fig
