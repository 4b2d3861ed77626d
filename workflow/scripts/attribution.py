"""Feature attribution FA[(site, layer)] for one (model, task) (minormech.attribution)."""

import json
import random
from dataclasses import asdict

import numpy as np
import torch

from minormech.activations import pad_token_id
from minormech.attribution import AttributionSettings, attribute_prompts, baseline_pool
from minormech.hooks import hook_name
from minormech.models import ModelManifest, load_model, set_threads
from minormech.probes import shard_prompts
from minormech.prompts import PromptRecipe, read_prompts
from minormech.provenance import PROMPTS_KEY, prompt_digests, to_text
from minormech.runlog import job_logger, progress
from minormech.shards import Shard, save_tensors

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
options = dict(params.attribution)
n_baselines = options.pop("baseline_prompts")
settings = AttributionSettings(**options, seed=params.seed)
manifest = ModelManifest.read(inputs.model)
model, tokenizer = load_model(manifest, params.compute["device"], params.compute["dtype"])
prompts = read_prompts(inputs.prompts, PromptRecipe(**params.prompt_recipe))


# expected_gradients (captum GradientShap) draws from the global generators of torch, numpy
# and Python's random module: seed all three, so that a rerun gives the same map.
torch.manual_seed(params.seed)
np.random.seed(params.seed)
random.seed(params.seed)
pool = None
if settings.method == "expected_gradients":
    shards = {
        task: [
            Shard(path)
            .expect(model_id=manifest.id, task=task, prompt_set="probe_test")
            .expect_widths(manifest.site_widths)
            for path in files
        ]
        for task, files in params.baseline_shards.items()
    }
    for task, task_shards in shards.items():  # the baselines are activations of the prompts their files hold
        baseline_prompts = read_prompts(params.baseline_prompts[task], PromptRecipe(**params.baseline_recipe))
        for shard in task_shards:
            shard_prompts(shard, {prompt.id: prompt for prompt in baseline_prompts})
    pool = baseline_pool(shards, params.sites, params.layers, n_baselines, np.random.default_rng([params.seed, 31337]))
fa = attribute_prompts(
    model,
    prompts,
    params.sites,
    params.layers,
    settings,
    pad_token_id(tokenizer),
    pool,
    progress=progress(f"{wildcards.task} attribution ({settings.method})"),
)
save_tensors(
    {hook_name(site, layer): values.contiguous() for (site, layer), values in fa.items()},
    snakemake.output[0],
    metadata={
        "model_id": manifest.id,
        "task": wildcards.task,
        "settings": json.dumps(asdict(settings)),
        "n_prompts": str(len(prompts)),
        PROMPTS_KEY: to_text(prompt_digests([inputs.prompts, *params.baseline_prompts.values()])),
    },
    made_from=f"{inputs.prompts} on the model of {inputs.model}",
)
log.info("attributed %d prompts with %s, reduce=%s", len(prompts), settings.method, settings.reduce)
