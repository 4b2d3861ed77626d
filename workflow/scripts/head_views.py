"""Head-level views of one (model, task) (minormech.heads): the per-head table and the
attention rows of the top heads."""

import time

import pandas as pd

from minormech.activations import pad_token_id
from minormech.heads import HeadSettings, head_results, head_table
from minormech.models import ModelManifest, load_model, set_threads
from minormech.prompts import PromptRecipe, read_prompts
from minormech.runlog import job_logger, progress
from minormech.runner import RunOptions
from minormech.uncertainty import Bootstrap

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
settings = params.heads
manifest = ModelManifest.read(inputs.model)
model, tokenizer = load_model(manifest, params.compute["device"], params.compute["dtype"])
prompts = read_prompts(inputs.prompts, PromptRecipe(**params.prompt_recipe))[: settings["prompts"]]
start = time.perf_counter()
results = head_results(
    model,
    tokenizer,
    prompts,
    params.layers,
    HeadSettings(tuple(params.knockout_layers), settings["top"]),
    RunOptions(
        settings["batch_size"],
        pad_token_id(tokenizer),
        progress(f"{wildcards.task} heads{' with knockouts' if params.knockout_layers else ''}"),
    ),
)
pd.DataFrame(head_table(results, Bootstrap(**params.bootstrap))).to_csv(snakemake.output.heads, index=False)
pd.DataFrame(results.attention_rows).to_csv(snakemake.output.attention, index=False)
log.info(
    "%s: %d prompts, %d layers x %d heads, knockouts in layers %s, unpatched accuracy %.3f, %.1f s",
    wildcards.task,
    len(prompts),
    len(params.layers),
    results.logprob_increase.shape[2],
    list(params.knockout_layers) or "none",
    results.unpatched_correct.mean(),
    time.perf_counter() - start,
)
