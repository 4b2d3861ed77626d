"""Shard mode: train and test the probes of every layer of one (model, task, site), from
the activation shards: unfiltered (with the control task beside it), or the four
filtered variants of SPEC "Filter"; every probe times `probe.seeds`."""
from minormech.config import prompt_count
from minormech.models import resolve_device, set_threads
from minormech.probe_results import ProbeOutputs, ProbeReport, ProbeVariants, control_task_targets, write_probe_results, xi_tensor_names
from minormech.probes import ProbeData, ProbeGroup, ProbeTraining, predict_stacks, train_probe_groups
from minormech.prompts import read_prompts
from minormech.runlog import job_logger, progress
from minormech.shards import Shard, load_tensors
from minormech.tasks import WeightTable

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
device = resolve_device(params.device)
settings = ProbeTraining.from_config(params.probe)


def site_data(prompt_file, shard_files, prompt_set):
    shards = [Shard(path).expect(model_id=wildcards.model, task=wildcards.task, prompt_set=prompt_set) for path in shard_files]
    return ProbeData(shards, read_prompts(prompt_file, prompt_count(snakemake.config, prompt_set)), wildcards.site, params.layers, params.probe["keep_in_memory"])


train = site_data(inputs.train_prompts, inputs.train_shards, "probe_train")
test = site_data(inputs.test_prompts, inputs.test_shards, "probe_test")
table = WeightTable.read_tsv(inputs.dataset, wildcards.task)
xi = load_tensors(inputs.xi, xi_tensor_names([wildcards.site], params.layers)) if wildcards.probe_kind == "filtered" else None
variants = ProbeVariants.of_kind(wildcards.probe_kind, wildcards.site, params.layers, xi)
groups = [ProbeGroup(wildcards.site, variants.masks, name=f"{wildcards.site} {wildcards.probe_kind}")]
with_control = wildcards.probe_kind == "unfiltered" and params.report["controls"]["control_task"]
if with_control:
    control_table = control_task_targets(table, params.report["seed"])
    groups.append(ProbeGroup(wildcards.site, control_targets=control_table, name=f"{wildcards.site} control task"))
stacks, summaries = train_probe_groups(
    train, groups, settings, max(train.max_length, test.max_length), device,
    progress(f"{wildcards.task} {wildcards.site} {wildcards.probe_kind} probes ({settings.regime}, {settings.seeds} seeds)"),
)
predictions, index = predict_stacks(stacks, test, batch_size=64)
write_probe_results(
    ProbeOutputs(**{key: snakemake.output[key] for key in ("table", "predictions", "summary")}),
    wildcards.model, wildcards.task, wildcards.site, params.layers, variants, predictions[0], index, test.prompts, test.targets,
    ProbeReport.from_config(params.report, wildcards.task, table, test.prompts), len(train), settings,
    {**summaries[0], "source": "shards", **({"control_task": summaries[1]} if with_control else {})},
    control=(predictions[1], control_table) if with_control else None,
)
