"""Figure 2: heatmap of xi (layer x feature) for one (model, site); where the model's head
size is known (params.head_size, features per attention head), the head boundaries of q,
k and v."""

import numpy as np
import pandas as pd

from minormech.figures import save_figure, xi_heatmap_figure
from minormech.hooks import hook_name
from minormech.runlog import job_logger
from minormech.shards import load_current_tensors

log = job_logger(snakemake.log[0])
wildcards, params = snakemake.wildcards, snakemake.params
xi_all = load_current_tensors(snakemake.input.xi, [hook_name(wildcards.site, layer) for layer in params.layers])
xi = np.stack([xi_all[hook_name(wildcards.site, layer)].numpy() for layer in params.layers])
long = pd.DataFrame(
    {
        "layer": np.repeat(params.layers, xi.shape[1]),
        "feature": np.tile(np.arange(xi.shape[1]), len(params.layers)),
        "xi": xi.reshape(-1),
    }
)
long.to_csv(snakemake.output.csv, index=False)
save_figure(
    xi_heatmap_figure(
        xi, params.layers, wildcards.model, wildcards.site, tuple(params.pair), head_size=params.head_size
    ),
    snakemake.output.pdf,
    snakemake.output.png,
)
log.info("wrote %s", snakemake.output.pdf)
