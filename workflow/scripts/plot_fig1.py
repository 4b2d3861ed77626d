"""Figure 1: unfiltered probe test MSE per layer for every task, with the baseline."""
import pandas as pd

from minormech.figures import probe_curves_figure, save_figure
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
table = pd.concat([pd.read_csv(path) for path in snakemake.input.tables], ignore_index=True)
table = table[["task", "site", "layer", "test_mse", "baseline_mse"]]
table.to_csv(snakemake.output.csv, index=False)
figure = probe_curves_figure(table, snakemake.wildcards.model, snakemake.wildcards.site)
save_figure(figure, snakemake.output.pdf, snakemake.output.png)
log.info("wrote %s", snakemake.output.pdf)
