"""One head-level figure (rule plot_heads; minormech.head_figures)."""

import pandas as pd

from minormech.figures import save_figure
from minormech.head_figures import HEATMAP_MEASURES, attention_figure, head_heatmap_figure, head_xi_figure
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
pair = tuple(params.pair)
if wildcards.figure == "heads_xi":
    fig, table = head_xi_figure(pd.read_csv(inputs.tables[0]), pair, wildcards.model)
else:
    tables = {task: pd.read_csv(path) for task, path in zip(pair, inputs.tables)}
    if wildcards.figure in HEATMAP_MEASURES:
        fig, table = head_heatmap_figure(tables, wildcards.figure, pair, wildcards.model)
    else:
        fig, table = attention_figure(tables, pair, wildcards.model)
table.to_csv(snakemake.output.csv, index=False)
save_figure(fig, snakemake.output.pdf, snakemake.output.png)
log.info("wrote %s (%d table rows)", snakemake.output.pdf, len(table))
