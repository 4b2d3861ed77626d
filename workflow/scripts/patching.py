"""Patching counts rho, dlogp and dlogit of the eight settings for the xi patch and its controls
(random, noop), every patched layer of one (model, site)."""

import json
import time

import pandas as pd

from minormech.activations import pad_token_id
from minormech.models import ModelManifest, load_model, set_threads
from minormech.patching import PatchingSettings, filter_op, patching_counts
from minormech.prompts import PromptRecipe, read_prompts
from minormech.provenance import PROMPTS_KEY, merged, prompt_digests
from minormech.ranking import site_keep_masks
from minormech.runlog import job_logger, progress
from minormech.runner import RunOptions
from minormech.shards import hook_widths, load_current_tensors, recorded_prompts
from minormech.uncertainty import Bootstrap

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
manifest = ModelManifest.read(inputs.model)
model, tokenizer = load_model(manifest, params.compute["device"], params.compute["dtype"])
pair, site = list(params.pair), wildcards.site
recipes = {prompt_set: PromptRecipe(**recipe) for prompt_set, recipe in params.prompt_recipes.items()}
reference = {task: read_prompts(path, recipes["patching_ref"]) for task, path in zip(pair, inputs.reference)}
others = {task: read_prompts(path, recipes["patching"]) for task, path in zip(pair, inputs.others)}
widths = hook_widths(manifest.site_widths, [site], params.layers)
xi = load_current_tensors(inputs.xi, list(widths), widths)
keep = {}
for tau1 in pair:
    for layer, mask in zip(
        params.layers, site_keep_masks(xi, site, params.layers, filter_op(tau1, pair), params.patching["h"])
    ):
        keep[(tau1, site, layer)] = mask
start = time.perf_counter()
result = patching_counts(
    model,
    reference,
    others,
    keep,
    PatchingSettings(
        pair,
        [site],
        params.layers,
        params.patching["alignment"],
        controls=params.controls,
        seed=params.seed,
        bootstrap=Bootstrap(**params.bootstrap),
    ),
    RunOptions(params.patching["batch_size"], pad_token_id(tokenizer), progress(f"patching {site}")),
)
pd.DataFrame(result.rows).to_csv(snakemake.output.counts, index=False)
pd.DataFrame(result.pairs)[["setting", "layer", "patch", "pair", "same", "dlogp", "dlogit"]].to_csv(
    snakemake.output.pairs, index=False
)
n_pairs = len(reference[pair[0]])
pd.DataFrame(
    [
        {"prompt_set": prompt_set, "task": task, "correct": value, "n": n_pairs, "accuracy": value / n_pairs}
        for (prompt_set, task), value in result.accuracy.items()
    ]
).to_csv(snakemake.output.accuracy, index=False)
prompts = merged(recorded_prompts(inputs.xi), prompt_digests([*inputs.reference, *inputs.others]))
with open(snakemake.output.inputs, "w") as handle:
    json.dump({PROMPTS_KEY: prompts}, handle, indent=2)
patched = {kind: count for kind, count in result.runs.items() if kind != "unpatched"}
log.info(
    "%d unpatched and %d patched batched prompt passes %s over %d pairs in %.1f s; unpatched accuracy %s",
    result.runs["unpatched"],
    sum(patched.values()),
    patched,
    n_pairs,
    time.perf_counter() - start,
    result.accuracy,
)
