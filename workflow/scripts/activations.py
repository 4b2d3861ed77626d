"""Record every configured (site, layer) for one chunk of a prompt set and write its shard."""

import time

from minormech.activations import Recording, extract_activations, pad_token_id
from minormech.hdf5_shards import Hdf5Settings
from minormech.models import ModelManifest, load_model, set_threads
from minormech.prompts import PromptRecipe, prompts_digest, read_prompts
from minormech.runlog import job_logger, progress
from minormech.runner import RunOptions
from minormech.shards import STORE_DTYPES, ShardHeader, chunk_rows, write_shard

log = job_logger(snakemake.log[0])
params, wildcards = snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
chunk = int(wildcards.chunk)
all_prompts = read_prompts(snakemake.input.prompts, PromptRecipe(**params.prompt_recipe))
prompts = [all_prompts[i] for i in chunk_rows(len(all_prompts), params.n_chunks)[chunk]]
manifest = ModelManifest.read(snakemake.input.model)
model, tokenizer = load_model(manifest, params.compute["device"], params.compute["dtype"])
start = time.perf_counter()
activations = extract_activations(
    model,
    prompts,
    Recording(params.sites, params.layers, STORE_DTYPES[params.store_dtype]),
    RunOptions(params.batch_size, pad_token_id(tokenizer), progress(f"chunk {chunk} forward passes")),
)
header = ShardHeader(
    model_id=manifest.id,
    task=wildcards.task,
    prompt_set=wildcards.prompt_set,
    chunk=chunk,
    sites=tuple(params.sites),
    layers=tuple(params.layers),
    store_dtype=params.store_dtype,
    prompts_sha256=prompts_digest(prompts),
)
write_shard(
    snakemake.output[0],
    header,
    activations,
    [p.id for p in prompts],
    [p.length for p in prompts],
    made_from=f"{snakemake.input.prompts} (chunk {chunk}) on the model of {snakemake.input.model}",
    hdf5=Hdf5Settings(**params.hdf5),
)
tokens = sum(p.length for p in prompts)
log.info(
    "%d prompts, %d tokens in %.1f s (%.0f tokens/s)",
    len(prompts),
    tokens,
    time.perf_counter() - start,
    tokens / (time.perf_counter() - start),
)
