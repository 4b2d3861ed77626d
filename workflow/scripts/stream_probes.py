"""Stream mode: one job per (model, task) runs the probe-training prompts through the model
and trains every configured probe on the fly (every site and layer, unfiltered and the
filtered variants), then runs the test prompts and writes, per site and kind, the files
shard mode writes (minormech.probe_job); rule probe puts them in place."""

import time
from pathlib import Path

from minormech.activations import pad_token_id
from minormech.models import ModelManifest, load_model, set_threads
from minormech.plan import PROBE_SUFFIXES, probe_input
from minormech.probe_job import JobRun, ProbeEntry, ProbeJob, ProbeSources, run_probe_job
from minormech.probe_results import ProbeOutputs, ProbeVariants
from minormech.prompts import PromptRecipe, read_drawn_prompts
from minormech.provenance import merged, prompt_digests
from minormech.runlog import job_logger, progress
from minormech.shards import chunk_rows, hook_widths, load_current_tensors, recorded_prompts
from minormech.stream import StreamSource, reuse_freed_memory
from minormech.tasks import WeightTable

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
log.info("freed memory kept in the heap: %s", reuse_freed_memory())
manifest = ModelManifest.read(inputs.model)
model, tokenizer = load_model(manifest, params.compute["device"], params.compute["dtype"])
device = next(model.parameters()).device
table = WeightTable.read_tsv(inputs.dataset, wildcards.task)


def source(prompt_set):
    recipe = PromptRecipe(**params.prompt_recipes[prompt_set])
    prompts = read_drawn_prompts(inputs[probe_input(prompt_set, "prompts")], recipe, table, prompt_set)
    chunks = chunk_rows(len(prompts), params.chunks[prompt_set])  # the shards shard mode would read
    widths = manifest.site_widths
    batch = params.forward_batch_size
    return StreamSource(
        model, prompts, params.sites, params.layers, widths, batch, pad_token_id(tokenizer), [len(c) for c in chunks]
    )


def kind_prompts(kind):
    """The prompt files a kind's probes are computed from, as in shard mode: the control
    task's only for the unfiltered probes, which it is scored beside."""
    sets = [prompt_set for prompt_set in params.prompt_recipes if kind != "filtered" or prompt_set != "probe_control"]
    return prompt_digests(inputs[probe_input(prompt_set, "prompts")] for prompt_set in sets)


def entry(site, kind, xi):
    folder = Path(snakemake.output[0], site)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = ProbeOutputs(**{name: folder / f"{kind}{suffix}" for name, suffix in PROBE_SUFFIXES.items()})
    prompts = merged(kind_prompts(kind), recorded_prompts(inputs.xi) if kind == "filtered" else {})
    return ProbeEntry(site, kind, ProbeVariants.of_kind(kind, site, params.layers, xi), outputs, prompts)


control = source("probe_control") if "probe_control" in params.prompt_recipes else None
sources = ProbeSources(source("probe_train"), source("probe_test"), control)
widths = hook_widths(manifest.site_widths, params.sites, params.layers)
xi = load_current_tensors(inputs.xi, list(widths), widths) if "filtered" in params.kinds else None
entries = [entry(site, kind, xi) for site in params.sites for kind in params.kinds]
job = ProbeJob.of_rule(wildcards.model, wildcards.task, inputs.dataset, params)
settings = job.settings
start = time.perf_counter()
train, test = sources.train, sources.test
max_positions = max(p.length for s in (train, test, sources.control) if s is not None for p in s.prompts)
label = f"{wildcards.task} stream probes ({settings.regime}, {len(entries)} entries of {settings.seeds} seeds)"
batch = params.forward_batch_size
run = JobRun(
    max_positions, batch, batch, progress(label), lambda: {"source": "stream", "forward_prompts": train.forward_prompts}
)
run_probe_job(job, entries, sources, device, run)
log.info(
    "%d training prompts run %d times in all; %d test prompts run once; %.0f s",
    len(train.prompts),
    train.forward_prompts,
    len(test.prompts),
    time.perf_counter() - start,
)
