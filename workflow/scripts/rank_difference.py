"""xi = rank(FA_task1) - rank(FA_task2) per (site, layer) (paper eq. 34, minormech.ranking)."""

import numpy as np
import torch

from minormech.models import ModelManifest
from minormech.provenance import PROMPTS_KEY, merged, to_text
from minormech.ranking import rank_difference
from minormech.runlog import job_logger
from minormech.shards import hook_widths, load_current_tensors, recorded_prompts, save_tensors
from minormech.tasks import stable_seed

log = job_logger(snakemake.log[0])
params = snakemake.params
task1, task2 = snakemake.input.task1, snakemake.input.task2
widths = hook_widths(ModelManifest.read(snakemake.input.model).site_widths, params.sites, params.layers)
fa1, fa2 = (load_current_tensors(path, list(widths), widths) for path in (task1, task2))
if set(fa1) != set(fa2):
    raise ValueError(f"{task1} and {task2} cover different sites or layers; delete both and rerun")
xi = {}
for key in sorted(fa1):
    rng = np.random.default_rng(stable_seed(params.seed, snakemake.wildcards.pair, key))
    xi[key] = torch.as_tensor(rank_difference(fa1[key].numpy(), fa2[key].numpy(), rng))
save_tensors(
    xi,
    snakemake.output[0],
    metadata={
        "pair": snakemake.wildcards.pair,
        PROMPTS_KEY: to_text(merged(*(recorded_prompts(path) for path in (task1, task2)))),
    },
    made_from=f"{task1} and {task2}",
)
log.info("xi for %d (site, layer) keys", len(xi))
