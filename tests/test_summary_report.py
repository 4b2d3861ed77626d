"""The summary in words (minormech.summary_report): the headline says what was found and
never presents a layer that loses to the baseline as a best layer; summary.md and
summary.rst carry the same cells; the end-of-run lines name stale summaries as stale."""

import json
import os

from docutils.core import publish_parts

from minormech.summary_report import findings_on_screen, headline, layer_list, summary_document, to_markdown, to_rst


def _interval(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


def _summary(layers_below_baseline):
    probe = {
        "best_layer": 3,
        "test_mse": _interval(50.1, 41.0, 60.2),
        "baseline_mse": _interval(52.2, 42.5, 61.7),
        "ceiling_mse": _interval(0.7, 0.4, 1.1),
        "selectivity_at_best_layer": None,
        "layers_below_baseline": layers_below_baseline,
    }
    eq41 = {"layers_holding": [1], "layers_significant": [], "per_layer": [{}] * 4}
    h3 = {"half": "ge0.5", "quarter": "ge0.25", "layers": [], "per_layer": []}
    return {
        "model": "m",
        "uncertainty": {"bootstrap": 1000, "level": 0.95},
        "accuracy": {"LR": {"correct": 3, "n": 12}},
        "sites": {"k": {"probes": {"LR": probe}, "eq41": eq41, "h3": {"LR": h3}}},
    }


def test_a_layer_that_loses_to_the_baseline_is_not_called_best():
    lines = headline(_summary(layers_below_baseline=[]))
    assert lines[0].startswith("Task accuracy") and "LR 3 of 12 (25%)" in lines[0]
    assert "no layer's probe beats the training-mean baseline's 52.20 [42.50, 61.70]" in lines[1]
    table = next(line for line in to_markdown(summary_document(_summary([]))).splitlines() if line.startswith("| LR"))
    assert "3 (not below baseline)" in table
    assert "in no layer" in lines[2]


def test_headline_counts_the_layers_that_beat_the_baseline():
    (line,) = [line for line in headline(_summary([0, 1, 3])) if "H1" in line]
    assert "the probe beats the training-mean baseline's 52.20 [42.50, 61.70] in 3 of 4 layers" in line
    assert "lowest at layer 3, test MSE 50.10 [41.00, 60.20]" in line


def test_markdown_and_rst_carry_the_same_table_cells():
    document = summary_document(_summary([0, 1]))
    html = publish_parts(to_rst(document), writer="html")["body"]
    markdown_row = next(line for line in to_markdown(document).splitlines() if line.startswith("| LR"))
    for cell in markdown_row.strip("| ").split(" | "):
        assert f"<td>{cell}</td>" in html, cell
    assert "System Message" not in html  # docutils reports rst errors inline


def test_layers_are_written_as_runs():
    assert layer_list([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert layer_list([]) == "none" and layer_list(None) == "n/a"


def test_a_summary_older_than_its_inputs_is_named_out_of_date(tmp_path):
    path, table = tmp_path / "summary.json", tmp_path / "probe.csv"
    path.write_text(json.dumps(_summary([0])))
    table.write_text("x\n")
    os.utime(path, (1000, 1000))
    (line,) = findings_on_screen(path, [str(table)], "figures")
    assert "out of date" in line
    os.utime(table, (500, 500))
    lines = findings_on_screen(path, [str(table)], "figures")
    assert lines[0] == f"m: summary {tmp_path / 'summary.md'}, figures in figures/"
    assert lines[1].strip().startswith("Task accuracy")
    assert findings_on_screen(tmp_path / "none.json", [], "figures") == []
