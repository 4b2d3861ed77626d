"""The figures' design, as specifications: references never stretch an axis, lines never
span unmeasured layers, colour scales ignore outliers, every panel has its layer ticks,
legends sit outside the data, and labels are plain words. Built from small synthetic
tables, without a model."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from minormech.figures import (
    filtered_probe_figure,
    patching_figure,
    probe_curves_figure,
    random_rank_reference,
    variant_label,
    xi_heatmap_figure,
)
from minormech.head_figures import attention_figure, head_heatmap_figure, robust_limit

PAIR = ("LR", "MD")
LAYERS = list(range(6))


def with_ci(frame: pd.DataFrame, column: str, values, half_width: float = 2.0) -> None:
    frame[column] = values
    frame[f"{column}_ci_low"] = frame[column] - half_width
    frame[f"{column}_ci_high"] = frame[column] + half_width


def probe_table(model: str = "m", offset: float = 0.0) -> pd.DataFrame:
    """Probe rows with MSE between 40 and 70 and a least-squares ceiling near 0."""
    frames = []
    for task in PAIR:
        frame = pd.DataFrame({"model": model, "task": task, "layer": LAYERS})
        with_ci(frame, "test_mse", np.linspace(40, 70, len(LAYERS)) + offset)
        with_ci(frame, "gain", np.linspace(5, 1, len(LAYERS)))
        with_ci(frame, "selectivity", np.linspace(2, -1, len(LAYERS)))
        with_ci(frame, "baseline_mse", 60.0, 5.0)
        with_ci(frame, "ceiling_mse", 0.7, 0.1)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def filtered_table(variants: tuple[str, str] = ("ge0.5", "le0.5")) -> pd.DataFrame:
    frames = []
    for task, variant in itertools.product(PAIR, variants):
        frame = pd.DataFrame({"task": task, "variant": variant, "layer": LAYERS})
        with_ci(frame, "test_mse", np.linspace(40, 70, len(LAYERS)))
        with_ci(frame, "halves_difference", np.linspace(-3, 3, len(LAYERS)), 1.0)
        with_ci(frame, "baseline_mse", 60.0, 5.0)
        with_ci(frame, "ceiling_mse", 0.7, 0.1)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def patching_tables(layers: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for tau1, u, v, patch, layer in itertools.product(PAIR, PAIR, "BS", ("xi", "random", "noop"), layers):
        rows.append({"tau1": tau1, "u": u, "v": v, "patch": patch, "layer": layer, "n_pairs": 12})
    counts = pd.DataFrame(rows)
    with_ci(counts, "rho", 6.0, 3.0)
    with_ci(counts, "dlogp", 0.1, 0.2)
    accuracy = pd.DataFrame({"prompt_set": "reference", "task": list(PAIR), "accuracy": [0.5, 0.25]})
    return counts, accuracy


def head_tables(outlier: float) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    tables = {}
    for task in PAIR:
        table = pd.DataFrame([{"layer": layer, "head": head} for layer in range(10) for head in range(9)])
        with_ci(table, "logprob_increase", rng.normal(scale=0.5, size=len(table)), 0.1)
        tables[task] = table
    tables["LR"].loc[0, "logprob_increase"] = outlier
    return tables


def attention_tables() -> dict[str, pd.DataFrame]:
    rows = {task: [] for task in PAIR}
    for task, prompt, rank, example in itertools.product(PAIR, range(6), range(2), range(4)):
        rows[task].append(
            {
                "prompt": prompt,
                "rank": rank,
                "layer": 3,
                "head": rank,
                "example": example,
                "examples_in_prompt": 4,
                "distance": float(example + 0.1 * prompt),
                "attention": 0.1 * (example + 1) + 0.01 * prompt,
            }
        )
    return {task: pd.DataFrame(table) for task, table in rows.items()}


@pytest.fixture(scope="module")
def figures():
    """Every redesigned figure once, drawn (so that ticks and extents exist)."""
    probes = probe_table()
    built = {
        "fig1": probe_curves_figure(probes, "m", "k", probe_table("m-random-init", 5.0)),
        "fig3": filtered_probe_figure(filtered_table(), probes, ["ge0.5", "le0.5"], "m", "k", PAIR),
        "fig5": patching_figure(*patching_tables([0, 14, 29]), "m", "k"),
        "heads_attention": attention_figure(attention_tables(), PAIR, "m")[0],
    }
    for fig in built.values():
        fig.canvas.draw()
    yield built
    for fig in built.values():
        plt.close(fig)


def data_axes(fig) -> list:
    """The panels of a figure (its colour bars excluded)."""
    return [ax for ax in fig.get_axes() if ax.get_label() != "<colorbar>"]


def all_legends(fig) -> list:
    found = list(fig.legends) + [ax.get_legend() for ax in fig.get_axes() if ax.get_legend() is not None]
    for sub in getattr(fig, "subfigs", []):
        found += all_legends(sub)
    return found


def test_ceiling_does_not_set_the_y_limit(figures):
    """Probes at 40-70 with a ceiling at 0.7: the MSE panels start far above 0, and the
    ceiling is written, with its interval, as a note."""
    for name in ("fig1", "fig3"):
        mse_panels = [ax for ax in data_axes(figures[name]) if ax.get_ylabel() == "test MSE"]
        assert mse_panels
        for ax in mse_panels:
            assert ax.get_ylim()[0] > 20, (name, ax.get_ylim())
        notes = [text.get_text() for ax in data_axes(figures[name]) for text in ax.texts]
        assert any("least-squares ceiling: 0.70 [0.60, 0.80], below the axis" in note for note in notes), notes


def test_every_panel_has_layer_tick_labels(figures):
    """No shared axis hides the layer ticks of a top row."""
    for name, fig in figures.items():
        for ax in data_axes(fig):
            labels = [label.get_text() for label in ax.get_xticklabels() if label.get_visible() and label.get_text()]
            assert labels, (name, ax.get_title())


def test_fig5_lines_join_only_adjacent_layers():
    """Patched layers 0, 14, 29: no line anywhere; with layers 0, 1, 2, 10, lines join only
    0-1-2 (never across the gap to 10)."""
    for layers, expect_lines in (([0, 14, 29], False), ([0, 1, 2, 10], True)):
        fig = patching_figure(*patching_tables(layers), "m", "k")
        drawn = []
        for ax in data_axes(fig):
            for line in ax.get_lines():
                x = np.asarray(line.get_xdata(), float)
                if line.get_transform() != ax.transData or line.get_linestyle() in ("None", "") or len(x) < 2:
                    continue
                drawn.append(line)
                assert np.abs(np.diff(x)).max() <= 1 + 1e-9, x
        assert bool(drawn) == expect_lines
        plt.close(fig)


def test_legends_sit_outside_the_data(figures):
    """No legend overlaps any panel."""
    for name, fig in figures.items():
        legends = all_legends(fig)
        assert legends, name
        renderer = fig.canvas.get_renderer()
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in data_axes(fig):
                assert not box.overlaps(ax.get_window_extent(renderer)), (name, ax.get_title())


def test_heads_colour_scale_ignores_an_outlier():
    """One head at 100 among values of about ±1: the colour limit stays near the bulk, the
    outlier saturates, and the colour bar says where it clips."""
    fig, _ = head_heatmap_figure(head_tables(outlier=100.0), "heads_increase", PAIR, "m")
    lr_panel = next(ax for ax in fig.get_axes() if ax.get_title() == "LR")
    low, high = lr_panel.images[0].get_clim()
    assert high == -low and high < 5
    assert any(text.get_text() == "100" for text in lr_panel.texts)
    labels = [ax.get_xlabel() for ax in fig.get_axes() if ax.get_label() == "<colorbar>"]
    assert labels and all("98th percentile of |value|" in label for label in labels)
    plt.close(fig)
    assert robust_limit(np.r_[np.ones(99), 1000.0]) == pytest.approx(1.0)


def test_plain_words_for_the_filter_variants(figures):
    """Legends say which features a probe kept in words, with the fraction; no code names."""
    assert variant_label("ge0.5", PAIR) == "features most important for LR (top half, 50%)"
    assert variant_label("le0.75", PAIR) == "features most important for MD (top quarter, 25%)"
    texts = [text.get_text() for legend in all_legends(figures["fig3"]) for text in legend.get_texts()]
    assert "features most important for MD (top half, 50%)" in texts
    assert not any(code in text for text in texts for code in ("ge0.5", "le0.5"))


def test_differences_are_drawn_with_their_intervals(figures):
    """Figure 3's eq. 41 row draws one interval bar per layer in each task's panel."""
    panels = [ax for ax in data_axes(figures["fig3"]) if "predicts" in ax.get_title()]
    assert len(panels) == len(PAIR)
    for ax in panels:
        segments = [len(c.get_segments()) for c in ax.collections if hasattr(c, "get_segments")]
        assert len(LAYERS) in segments, ax.get_title()


def test_random_rank_reference_is_exact_for_small_d():
    """Mean |xi| of two independent random rankings of d features, checked against all d!
    permutations for d = 5 (its mean and standard deviation)."""
    d = 5
    values = [np.abs(np.arange(d) - np.array(p)).mean() for p in itertools.permutations(range(d))]
    mean, sd = random_rank_reference(d)
    assert mean == pytest.approx(np.mean(values)) and sd == pytest.approx(np.std(values))


def test_fig2_marks_head_boundaries_only_for_head_sites():
    """k splits into key/value heads: lines at each head boundary; o has no head slices."""
    xi = np.arange(2 * 12).reshape(2, 12) - 12
    for site, expected in (("k", [3.5, 7.5]), ("o", [])):
        fig = xi_heatmap_figure(xi, [0, 1], "m", site, PAIR, head_size=4)
        heat = fig.get_axes()[0]
        vertical = sorted(
            float(line.get_xdata()[0])
            for line in heat.get_lines()
            if isinstance(line, Line2D) and len(set(line.get_xdata())) == 1
        )
        assert vertical == expected
        bar = next(ax for ax in fig.get_axes() if ax.get_label() == "<colorbar>")
        assert any(label.get_text().lstrip("−-").isdigit() for label in bar.get_xticklabels()), "numeric ticks"
        plt.close(fig)


def test_attention_counts_have_integer_ticks_and_rho_with_n(figures):
    fig = figures["heads_attention"]
    left = data_axes(fig)[0]
    ticks = left.get_xticks()
    assert np.allclose(ticks, np.round(ticks))
    texts = [text.get_text() for text in left.get_legend().get_texts()]
    assert texts and all("Spearman rho = " in text and "(n = 24)" in text for text in texts)
