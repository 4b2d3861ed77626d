"""xi of the filter pair summed within each head's slice of q, k and v (minormech.heads.head_xi)."""

import pandas as pd
from transformers import AutoConfig

from minormech.heads import HeadLayout, head_xi
from minormech.models import ModelManifest
from minormech.runlog import job_logger
from minormech.shards import hook_widths, load_current_tensors

log = job_logger(snakemake.log[0])
params = snakemake.params
manifest = ModelManifest.read(snakemake.input.model)
layout = HeadLayout.of_config(AutoConfig.from_pretrained(manifest.load_from))
sites = [site for site in params.sites if layout.heads_of(site)]
widths = hook_widths(manifest.site_widths, sites, params.layers)
xi = load_current_tensors(snakemake.input.xi, list(widths), widths)
rows = head_xi(xi, layout, params.layers)
pd.DataFrame(rows, columns=["site", "layer", "head", "xi_sum", "xi_mean"]).to_csv(snakemake.output[0], index=False)
log.info(
    "per-head xi of sites %s (%d rows); sites without head slices: %s",
    sites,
    len(rows),
    [s for s in params.sites if s not in sites],
)
