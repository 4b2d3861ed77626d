"""Figure 1: unfiltered probe test MSE per layer for every task, with the controls that
were computed (random-init model, baseline, least-squares ceiling) and, below, the paired
differences (gain over the baseline, selectivity of the control task), all with 95%
intervals."""

import pandas as pd

from minormech.figures import probe_curves_figure, save_figure
from minormech.provenance import check_summary
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
for summary in snakemake.input.summaries:
    check_summary(summary)
table = pd.concat([pd.read_csv(path) for path in snakemake.input.tables], ignore_index=True)
random_init = None
if snakemake.input.get("random_init"):
    random_init = pd.concat([pd.read_csv(path) for path in snakemake.input.random_init], ignore_index=True)
pd.concat([table, random_init], ignore_index=True).to_csv(snakemake.output.csv, index=False)
figure = probe_curves_figure(table, snakemake.wildcards.model, snakemake.wildcards.site, random_init)
save_figure(figure, snakemake.output.pdf, snakemake.output.png)
log.info("wrote %s", snakemake.output.pdf)
