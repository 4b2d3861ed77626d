"""results/<model>/summary.json, summary.md and summary.rst: what the figures show, with
intervals (minormech.summary), headline first (minormech.summary_report). params.files
names every input by its role (minormech.plan RunPlan.summary_files)."""

import json

import pandas as pd

from minormech.provenance import check_summary
from minormech.ranking import FILTER_VARIANT_NAMES, HALVES, QUARTERS
from minormech.runlog import job_logger
from minormech.shards import check_result
from minormech.summary import (
    ProbeErrors,
    eq41_summary,
    h3_summary,
    patching_summary,
    probe_summary,
)
from minormech.summary_report import headline, summary_document, to_markdown, to_rst
from minormech.tasks import WeightTable
from minormech.uncertainty import Bootstrap

log = job_logger(snakemake.log[0])
params, wildcards = snakemake.params, snakemake.wildcards
files, pair = params.files, list(params.pair)
bootstrap = Bootstrap(**params.bootstrap)
filtered_variants = list(FILTER_VARIANT_NAMES)
tables = {task: WeightTable.read_tsv(path, task) for task, path in files["datasets"].items()}
train_mean = {task: table.weights[table.train_ids].mean(0) for task, table in tables.items()}
uncertainty = {"bootstrap": bootstrap.n_boot, "level": bootstrap.level}
accuracy = pd.read_csv(files["accuracy"])
accuracy = {
    row.task: {"correct": int(row.correct), "n": int(row.n)}
    for row in accuracy[accuracy["prompt_set"] == "reference"].itertuples()
}
summary = {"model": wildcards.model, "uncertainty": uncertainty, "pair": pair, "accuracy": accuracy, "sites": {}}


def site_summary(site_files):
    for role in ("unfiltered_predictions", "random_init_predictions", "filtered_predictions"):
        for path in site_files[role].values():
            check_result(path)
    entry = {"probes": {}}
    for task, path in site_files["unfiltered"].items():
        errors = ProbeErrors.read(site_files["unfiltered_predictions"][task], train_mean[task], ["unfiltered"])
        control = site_files["random_init"].get(task)
        if control:
            control_errors = ProbeErrors.read(
                site_files["random_init_predictions"][task], train_mean[task], ["unfiltered"]
            )
            control = (pd.read_csv(control), control_errors)
        entry["probes"][task] = probe_summary(pd.read_csv(path), errors, bootstrap, control)
    predictions = site_files["filtered_predictions"]
    errors = [ProbeErrors.read(predictions[task], train_mean[task], filtered_variants) for task in pair]
    entry["eq41"] = eq41_summary(errors[0], errors[1], params.layers, bootstrap)
    entry["h3"] = {
        task: h3_summary(e, half, quarter, params.layers, bootstrap)
        for task, e, half, quarter in zip(pair, errors, HALVES, QUARTERS)
    }
    check_summary(site_files["patching_inputs"])
    counts, pairs = pd.read_csv(site_files["patching"]), pd.read_csv(site_files["patching_pairs"])
    entry["patching"] = patching_summary(counts, pairs, bootstrap)
    return entry


for site in params.sites:
    entry = site_summary(files["sites"][site])
    summary["sites"][site] = entry
    eq41, h3 = entry["eq41"], {task: h3["layers"] for task, h3 in entry["h3"].items()}
    log.info(
        "site %s: eq. 41 holds in %s (significant in %s); H3 layers %s",
        site,
        eq41["layers_holding"],
        eq41["layers_significant"],
        h3,
    )
with open(snakemake.output.json, "w") as handle:
    json.dump(summary, handle, indent=2)
document = summary_document(summary)
for path, render in ((snakemake.output.md, to_markdown), (snakemake.output.rst, to_rst)):
    with open(path, "w") as handle:
        handle.write(render(document))
for line in headline(summary):
    log.info("%s", line)
log.info("wrote %s", snakemake.output.md)
