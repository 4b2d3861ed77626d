"""Figures 3 and 4: filtered probe curves for one (model, site); figure 3 also writes the
eq. 41 table of layers where each task is probed better on its own important half."""

import pandas as pd

from minormech.figures import eq41_table, filtered_probe_figure, save_figure
from minormech.provenance import check_summary
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
wildcards, params = snakemake.wildcards, snakemake.params
for summary in snakemake.input.summaries:
    check_summary(summary)
filtered = pd.concat([pd.read_csv(path) for path in snakemake.input.filtered], ignore_index=True)
unfiltered = pd.concat([pd.read_csv(path) for path in snakemake.input.unfiltered], ignore_index=True)
shown = filtered[filtered["variant"].isin(params.variants)]
shown.to_csv(snakemake.output.csv, index=False)
figure = filtered_probe_figure(
    shown, unfiltered, list(params.variants), wildcards.model, wildcards.site, tuple(params.pair)
)
save_figure(figure, snakemake.output.pdf, snakemake.output.png)
if "eq41" in snakemake.output.keys():
    table = eq41_table(filtered, tuple(params.pair))
    table.to_csv(snakemake.output.eq41, index=False)
    log.info("eq. 41 holds in layers %s", table.loc[table["eq41_holds"], "layer"].tolist())
log.info("wrote %s", snakemake.output.pdf)
