"""summary.json in words and tables, for a reader: summary.md (for a terminal or a
repository page) and summary.rst (inlined into `snakemake --report`).

Both come from one document, a list of blocks, so the two files never say different
things. The document opens with a headline: the model's task accuracy on its own
patching prompts and, per site and hypothesis (§5: H1 the weights are decodable, H2
eq. 41, H3 the quarter probes lose what the half probes had, and the patching of §4.3),
what was found with its interval. A lowest-MSE layer that does not beat the
training-mean baseline is reported as such, never as a best layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from minormech.probe_results import POOLINGS


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Block = Heading | Paragraph | Bullets | Table


def interval_text(value: dict | None, digits: int = 2) -> str:
    """`mean [low, high]`, or n/a for a reference that was not computed."""
    if value is None:
        return "n/a"
    return f"{value['mean']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def layer_list(layers: list[int] | None) -> str:
    """Layers as runs of consecutive numbers: [0, 1, 2, 5] -> "0-2, 5"."""
    if layers is None:
        return "n/a"
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs) or "none"


def accuracy_text(accuracy: dict[str, dict]) -> str:
    """One task's unpatched greedy answers: `correct of n (percent)` per task."""
    return "; ".join(
        f"{task} {row['correct']} of {row['n']} ({row['correct'] / row['n']:.0%})" for task, row in accuracy.items()
    )


def probe_headline(task: str, probe: dict, n_layers: int) -> str:
    """H1 for one task in one sentence: does any layer's probe beat the baseline, where is
    it lowest, and does it beat the random-init model there too."""
    below = probe["layers_below_baseline"]
    lowest = f"layer {probe['best_layer']}, test MSE {interval_text(probe['test_mse'])}"
    baseline = f"the training-mean baseline's {interval_text(probe['baseline_mse'])}"
    if not below:
        return f"{task}: no layer's probe beats {baseline}; the lowest test MSE ({lowest}) is not below it."
    text = f"{task}: the probe beats {baseline} in {len(below)} of {n_layers} layers; lowest at {lowest}"
    if probe["best_layer"] not in below:
        text += " (that layer itself is not significantly below the baseline)"
    if "layers_below_random_init" in probe:
        text += f"; below the random-init model too in {len(probe['layers_below_random_init'])} of them"
    return text + "."


def patching_headline(patching: dict) -> str:
    """Where the xi-selected patch and a random patch of as many features differ (§4.3)."""
    differing = {
        setting: entry["layers_xi_differs_from_random"]
        for setting, entry in patching.items()
        if "layers_xi_differs_from_random" in entry
    }
    if not differing:
        return "Patching: no random-patch control was run, so xi is compared with nothing."
    found = [f"{setting} at layers {layer_list(layers)}" for setting, layers in differing.items() if layers]
    if not found:
        return f"Patching: the xi patch and the random patch differ in none of the {len(differing)} settings."
    return (
        f"Patching: the xi patch and the random patch differ (paired interval excluding zero) in "
        f"{len(found)} of {len(differing)} settings: {'; '.join(found)}."
    )


def site_headline(site: str, entry: dict, n_layers: int) -> list[str]:
    eq41, h3 = entry["eq41"], entry["h3"]
    lines = [
        f"Site {site}, H1 (probes decode w), " + probe_headline(task, probe, n_layers)
        for task, probe in entry["probes"].items()
    ]
    lines.append(
        f"Site {site}, H2 (eq. 41, both paired intervals excluding zero): "
        + (
            f"in {len(eq41['layers_significant'])} of {n_layers} layers ({layer_list(eq41['layers_significant'])})"
            if eq41["layers_significant"]
            else "in no layer"
        )
        + f"; by the means alone in {len(eq41['layers_holding'])}."
    )
    lines.append(
        f"Site {site}, H3 (the quarter probe loses what the half probe had): "
        + "; ".join(f"{task} in {len(result['layers'])} of {n_layers} layers" for task, result in h3.items())
        + "."
    )
    if entry.get("patching"):
        lines.append(f"Site {site}, " + patching_headline(entry["patching"]))
    return lines


def headline(summary: dict) -> list[str]:
    """The findings in sentences, task accuracy first: a probe or patch finding on a model
    that cannot do the task is read differently from one on a model that can."""
    lines = []
    if summary.get("accuracy"):
        lines.append(
            f"Task accuracy (greedy answers to the unpatched patching prompts): {accuracy_text(summary['accuracy'])}."
        )
    for site, entry in summary["sites"].items():
        lines += site_headline(site, entry, len(entry["eq41"]["per_layer"]))
    return lines


def ridge_text(ridge: dict | None) -> str:
    """The ridge readouts' lowest test MSE per pooling with its layer, or n/a when off."""
    if not ridge:
        return "n/a"
    return "; ".join(
        f"{interval_text(ridge[pooling]['test_mse'])} (layer {ridge[pooling]['layer']})"
        for pooling in POOLINGS
        if pooling in ridge
    )


def probe_table(entry: dict) -> Table:
    def row(task: str, probe: dict) -> tuple[str, ...]:
        random_init = probe.get("random_init_best")
        beaten = probe["best_layer"] in probe["layers_below_baseline"]
        return (
            task,
            f"{probe['best_layer']}" + ("" if beaten else " (not below baseline)"),
            interval_text(probe["test_mse"]),
            interval_text(probe["baseline_mse"]),
            interval_text(probe["ceiling_mse"]),
            interval_text(probe["selectivity_at_best_layer"]),
            f"{interval_text(random_init['test_mse'])} (layer {random_init['layer']})" if random_init else "n/a",
            ridge_text(probe.get("ridge_best")),
            layer_list(probe["layers_below_baseline"]),
            layer_list(probe.get("layers_below_random_init")),
            layer_list(probe.get("layers_selective")),
        )

    header = (
        "task",
        "layer of lowest test MSE",
        "test MSE",
        "baseline",
        "least-squares ceiling",
        "selectivity there",
        "random-init lowest",
        "ridge lowest (mean-pooled; last token)",
        "layers below baseline",
        "of those, below random-init",
        "layers selective (control task)",
    )
    return Table(header, tuple(row(task, probe) for task, probe in entry["probes"].items()))


def patching_table(patching: dict) -> Table:
    """Per setting, the layer where xi moves the prediction most (lowest rho for B, highest
    for S) with the random and no-op patches there."""

    def row(setting: str, entry: dict) -> tuple[str, ...]:
        layers = entry["layers"]
        xi = {layer: values["xi"]["rho"]["mean"] for layer, values in layers.items()}
        pick = (min if setting.endswith(",B)") else max)(xi, key=xi.get)
        cells = tuple(interval_text(layers[pick].get(patch, {}).get("rho"), 1) for patch in ("xi", "random", "noop"))
        return (
            setting,
            pick,
            *cells,
            f"{min(xi.values()):g}-{max(xi.values()):g}",
            layer_list(entry.get("layers_xi_differs_from_random")),
        )

    header = ("setting", "layer", "rho xi", "rho random", "rho no-op", "xi range over layers", "xi differs from random")
    return Table(header, tuple(row(setting, entry) for setting, entry in patching.items()))


def site_blocks(site: str, entry: dict) -> list[Block]:
    eq41 = entry["eq41"]
    blocks: list[Block] = [
        Heading(f"Site {site}"),
        probe_table(entry),
        Paragraph(
            f"Eq. 41 (H2) holds by the means in layers {layer_list(eq41['layers_holding'])}; significantly "
            f"(both intervals exclude zero) in {layer_list(eq41['layers_significant'])}."
        ),
        Bullets(
            tuple(
                f"H3, {task}: layers where the probe on the task's own important half ({h3['half']}) beats the "
                f"baseline and the one on its own quarter ({h3['quarter']}) loses it: {layer_list(h3['layers'])}."
                for task, h3 in entry["h3"].items()
            )
        ),
    ]
    if entry.get("patching"):
        blocks += [
            Paragraph(
                "Patching: rho (pairs whose patched prediction equals the reference's unpatched one) of the "
                "xi-selected half, of a random subset of as many features and of the no-op patch, at the layer "
                "where xi moves the prediction most; per-layer values with intervals are in summary.json."
            ),
            patching_table(entry["patching"]),
        ]
    return blocks


def summary_document(summary: dict) -> list[Block]:
    """The whole summary: headline, how to read the intervals, then each site's tables."""
    level = f"{summary['uncertainty']['level']:.0%}"
    blocks: list[Block] = [
        Heading(f"{summary['model']}: summary"),
        Bullets(tuple(headline(summary))),
        Paragraph(
            f"Intervals are {level} percentile bootstrap intervals ({summary['uncertainty']['bootstrap']} resamples) "
            "over the held-out test weights and probe seeds (probes) or prompt pairs (patching). A layer is listed "
            "as significant only when its paired interval excludes zero. Selectivity (control task) = the probe's "
            "gain over the baseline minus a control probe's gain on a random relabelling pi(w) of the weights, both "
            "on new prompts of weights seen in training (bootstrap over those weights); a layer is selective when "
            "its interval is above zero."
        ),
    ]
    for site, entry in summary["sites"].items():
        blocks += site_blocks(site, entry)
    return blocks


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for number, block in enumerate(blocks):
        if isinstance(block, Heading):
            lines.append(("# " if number == 0 else "## ") + block.text)
        elif isinstance(block, Paragraph):
            lines.append(block.text)
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items]
        else:
            lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
        lines.append("")
    return "\n".join(lines)


def to_rst(blocks: list[Block]) -> str:
    """reStructuredText for the report caption (docutils): headings as section titles,
    tables as list-tables, which take cells of any width."""
    lines: list[str] = []
    for number, block in enumerate(blocks):
        if isinstance(block, Heading):
            lines += [block.text, ("=" if number == 0 else "-") * len(block.text)]
        elif isinstance(block, Paragraph):
            lines.append(block.text)
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items]
        else:
            lines += [".. list-table::", "   :header-rows: 1", ""]
            for row in (block.header, *block.rows):
                lines += [f"   {'*' if column == 0 else ' '} - {cell}" for column, cell in enumerate(row)]
        lines.append("")
    return "\n".join(lines)


def findings_on_screen(json_path: Path, inputs: list[str], figures: str) -> list[str]:
    """What the end of a run prints for one model: where its summary and figures are and
    the summary's headline. A summary older than one of its inputs (the run built other
    targets) is named as out of date rather than shown as this run's finding; one not
    built yet is skipped."""
    if not json_path.exists():
        return []
    stamp = json_path.stat().st_mtime
    if any(Path(path).exists() and Path(path).stat().st_mtime > stamp for path in inputs):
        return [f"{json_path.with_suffix('.md')}: out of date (its inputs changed); `snakemake {json_path}` updates it"]
    summary = json.loads(json_path.read_text())
    lines = [f"{summary['model']}: summary {json_path.with_suffix('.md')}, figures in {figures}/"]
    return lines + [f"  {line}" for line in headline(summary)]
