"""Figure 5: patching counts rho and the change in log p(r_NP) of the eight settings per layer
for one (model, site), with the random and noop controls when the patching rule ran them."""

import pandas as pd

from minormech.figures import patching_figure, save_figure
from minormech.provenance import check_summary
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
check_summary(snakemake.input.inputs)
counts = pd.read_csv(snakemake.input.counts)
accuracy = pd.read_csv(snakemake.input.accuracy)
counts.to_csv(snakemake.output.csv, index=False)
save_figure(
    patching_figure(counts, accuracy, snakemake.wildcards.model, snakemake.wildcards.site),
    snakemake.output.pdf,
    snakemake.output.png,
)
log.info("wrote %s", snakemake.output.pdf)
