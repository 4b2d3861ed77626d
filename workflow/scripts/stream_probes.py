"""Stream mode: one job per (model, task) runs the probe-training prompts through the model
and trains every configured probe on the fly (every site and layer, unfiltered and the
filtered variants), then runs the test prompts and writes the same files as shard mode."""
import time

from minormech.activations import pad_token_id
from minormech.config import prompt_count
from minormech.models import ModelManifest, load_model, set_threads
from minormech.probe_results import ProbeOutputs, ProbeReport, ProbeVariants, control_task_targets, write_probe_results, xi_tensor_names
from minormech.probes import ProbeGroup, ProbeTraining, predict_stacks, train_probe_groups
from minormech.prompts import read_prompts
from minormech.runlog import job_logger, progress
from minormech.shards import chunk_rows, load_tensors
from minormech.stream import StreamSource, reuse_freed_memory
from minormech.tasks import WeightTable

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
log.info("freed memory kept in the heap: %s", reuse_freed_memory())
settings = ProbeTraining.from_config(params.probe)
manifest = ModelManifest.read(inputs.model)
model, tokenizer = load_model(manifest, params.device, params.dtype)
device = next(model.parameters()).device


def source(prompt_set):
    prompts = read_prompts(getattr(inputs, f"{prompt_set}_prompts"), prompt_count(snakemake.config, prompt_set))
    chunks = chunk_rows(len(prompts), params.chunks[prompt_set])
    return StreamSource(model, prompts, params.sites, params.layers, manifest.site_widths, params.forward_batch_size,
                        pad_token_id(tokenizer), [len(c) for c in chunks])


train, test = source("probe_train"), source("probe_test")
table = WeightTable.read_tsv(inputs.dataset, wildcards.task)
xi = load_tensors(inputs.xi, xi_tensor_names(params.sites, params.layers)) if "filtered" in params.kinds else None
plan = [(site, kind, ProbeVariants.of_kind(kind, site, params.layers, xi)) for site in params.sites for kind in params.kinds]
groups = [ProbeGroup(site, variants.masks, name=f"{site} {kind}") for site, kind, variants in plan]
control_table = control_task_targets(table, params.report["seed"]) if params.report["controls"]["control_task"] else None
if control_table is not None:  # one control-task stack per site, after the plan's stacks
    groups += [ProbeGroup(site, control_targets=control_table, name=f"{site} control task") for site in params.sites]
start = time.perf_counter()
stacks, summaries = train_probe_groups(
    train, groups, settings, max(p.length for p in [*train.prompts, *test.prompts]), device,
    progress(f"{wildcards.task} stream probes ({settings.regime}, {len(groups)} stacks of {settings.seeds} seeds)"), eval_batch_size=params.forward_batch_size,
)
train_seconds = time.perf_counter() - start
predictions, index = predict_stacks(stacks, test, params.forward_batch_size)
log.info("%d training prompts run %d times in all (%.0f s, training included); %d test prompts run once",
         len(train.prompts), train.forward_prompts, train_seconds, len(test.prompts))
report = ProbeReport.from_config(params.report, wildcards.task, table, test.prompts)
for i, (site, kind, variants) in enumerate(plan):
    if not snakemake.output.tables[i].endswith(f"/{site}/{kind}.csv"):
        raise RuntimeError(f"output {snakemake.output.tables[i]} is not the file of ({site}, {kind}); rules/common.smk stream_outputs changed order")
    control = None
    summary = {**summaries[i], "source": "stream", "forward_prompts": train.forward_prompts}
    if kind == "unfiltered" and control_table is not None:
        c = len(plan) + params.sites.index(site)
        control, summary["control_task"] = (predictions[c], control_table), summaries[c]
    write_probe_results(
        ProbeOutputs(snakemake.output.tables[i], snakemake.output.predictions[i], snakemake.output.summaries[i]),
        wildcards.model, wildcards.task, site, params.layers, variants, predictions[i], index, test.prompts, test.targets,
        report, len(train.prompts), settings, summary, control=control,
    )
