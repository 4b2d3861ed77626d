"""xi = rank(FA_task1) - rank(FA_task2) per (site, layer) (paper eq. 34, minormech.ranking)."""

import numpy as np
import torch

from minormech.ranking import rank_difference
from minormech.runlog import job_logger
from minormech.shards import load_tensors, save_tensors
from minormech.tasks import stable_seed

log = job_logger(snakemake.log[0])
fa1, fa2 = load_tensors(snakemake.input.task1), load_tensors(snakemake.input.task2)
if set(fa1) != set(fa2):
    raise ValueError(
        f"{snakemake.input.task1} and {snakemake.input.task2} cover different sites or layers; delete both and rerun"
    )
for key in sorted(fa1):
    if fa1[key].shape != fa2[key].shape:
        raise ValueError(
            f"{snakemake.input.task2}: {key} has shape {list(fa2[key].shape)}, but {snakemake.input.task1} has "
            f"{list(fa1[key].shape)}; one of them is damaged: delete both and rerun"
        )
xi = {}
for key in sorted(fa1):
    rng = np.random.default_rng(stable_seed(snakemake.params.seed, snakemake.wildcards.pair, key))
    xi[key] = torch.as_tensor(rank_difference(fa1[key].numpy(), fa2[key].numpy(), rng))
save_tensors(
    xi,
    snakemake.output[0],
    metadata={"pair": snakemake.wildcards.pair},
    made_from=f"{snakemake.input.task1} and {snakemake.input.task2}",
)
log.info("xi for %d (site, layer) keys", len(xi))
