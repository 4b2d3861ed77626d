"""results/<model>/summary.json and summary.md: what the figures show, with intervals
(minormech.summary). Input names are those of rules/common.smk summary_inputs."""
import json

import pandas as pd

from minormech.ranking import FILTER_VARIANTS, variant_name
from minormech.runlog import job_logger
from minormech.summary import OWN_HALF, OWN_QUARTER, ProbeErrors, eq41_summary, h3_summary, patching_summary, probe_summary, summary_markdown
from minormech.tasks import WeightTable
from minormech.uncertainty import Bootstrap

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
bootstrap = Bootstrap.from_config(params.uncertainty, params.seed)
filtered_variants = [variant_name(op, h) for op, h in FILTER_VARIANTS]
tasks = sorted({key.split("__")[2] for key in inputs.keys() if key.startswith("unfiltered__")})
train_mean = {task: WeightTable.read_tsv(inputs[f"dataset__{task}"], task) for task in tasks}
train_mean = {task: table.weights[table.train_ids].mean(0) for task, table in train_mean.items()}
summary = {"model": wildcards.model, "uncertainty": params.uncertainty, "pair": list(params.pair), "sites": {}}
for site in params.sites:
    entry = {"probes": {}}
    for task in tasks:
        random_init = pd.read_csv(inputs[f"random_init__{site}__{task}"]) if f"random_init__{site}__{task}" in inputs.keys() else None
        entry["probes"][task] = probe_summary(pd.read_csv(inputs[f"unfiltered__{site}__{task}"]), random_init)
    errors = [ProbeErrors.read(inputs[f"filtered__{site}__{task}"], train_mean[task], filtered_variants) for task in params.pair]
    entry["eq41"] = eq41_summary(errors[0], errors[1], params.layers, bootstrap)
    entry["h3"] = {task: h3_summary(e, half, quarter, params.layers, bootstrap) for task, e, half, quarter in zip(params.pair, errors, OWN_HALF, OWN_QUARTER)}
    entry["patching"] = patching_summary(pd.read_csv(inputs[f"patching__{site}"]), pd.read_csv(inputs[f"patching_pairs__{site}"]), bootstrap)
    summary["sites"][site] = entry
    log.info("site %s: eq. 41 holds in %s (significant in %s); H3 layers %s", site, entry["eq41"]["layers_holding"], entry["eq41"]["layers_significant"],
             {task: h3["layers"] for task, h3 in entry["h3"].items()})
with open(snakemake.output.json, "w") as handle:
    json.dump(summary, handle, indent=2)
with open(snakemake.output.md, "w") as handle:
    handle.write(summary_markdown(summary))
log.info("wrote %s", snakemake.output.md)
