"""Patching counts rho for the eight settings, every patched layer of one (model, site)."""
import time

import pandas as pd
import torch
from safetensors.torch import load_file

from minormech.activations import pad_token_id
from minormech.hooks import hook_name
from minormech.models import ModelManifest, load_model, set_threads
from minormech.patching import filter_op, patching_counts
from minormech.prompts import read_prompts
from minormech.ranking import filter_mask
from minormech.runlog import job_logger, progress

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
manifest = ModelManifest.read(inputs.model)
model, tokenizer = load_model(manifest, params.device, params.dtype)
pair, site = list(params.pair), wildcards.site
prompt_file = {(path.split("/")[-2], path.split("/")[-1].removesuffix(".jsonl")): path for path in inputs.prompts}
reference = {task: read_prompts(prompt_file[(task, "patching_ref")]) for task in pair}
others = {task: read_prompts(prompt_file[(task, "patching")]) for task in pair}
xi = load_file(inputs.xi)
keep = {
    (tau1, site, layer): torch.as_tensor(filter_mask(xi[hook_name(site, layer)].numpy(), filter_op(tau1, pair), 0.5))
    for tau1 in pair
    for layer in params.layers
}
start = time.perf_counter()
rows, accuracy, passes = patching_counts(
    model, reference, others, pair, [site], params.layers, keep, params.patching["batch_size"], pad_token_id(tokenizer),
    params.patching["alignment"], progress=progress(f"patching {site}"),
)
for row in rows:
    row["n_kept"] = int(keep[(row["tau1"], site, row["layer"])].sum())
pd.DataFrame(rows).to_csv(snakemake.output.counts, index=False)
n_pairs = len(reference[pair[0]])
pd.DataFrame(
    [{"prompt_set": key.split(":")[0], "task": key.split(":")[1], "correct": value, "n": n_pairs, "accuracy": value / n_pairs} for key, value in accuracy.items()]
).to_csv(snakemake.output.accuracy, index=False)
log.info("%d batched passes (unpatched + patched) over %d pairs in %.1f s; unpatched accuracy %s", passes, n_pairs, time.perf_counter() - start, accuracy)
