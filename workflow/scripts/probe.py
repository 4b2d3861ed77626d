"""Shard mode: train and test the probes of every layer of one (model, task, site), from
the activation shards: unfiltered, or the four filtered variants of SPEC "Filter"."""
import torch

from minormech.config import prompt_count
from minormech.models import resolve_device, set_threads
from minormech.probe_results import ProbeOutputs, ProbeVariants, write_probe_results, xi_tensor_names
from minormech.probes import ProbeData, ProbeGroup, ProbeTraining, mean_baseline_mse, predict_stacks, train_probe_groups
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
xi = load_tensors(inputs.xi, xi_tensor_names([wildcards.site], params.layers)) if wildcards.probe_kind == "filtered" else None
variants = ProbeVariants.of_kind(wildcards.probe_kind, wildcards.site, params.layers, xi)
stacks, (summary,) = train_probe_groups(
    train, [ProbeGroup(wildcards.site, variants.masks, name=f"{wildcards.site} {wildcards.probe_kind}")], settings,
    max(train.max_length, test.max_length), device,
    progress(f"{wildcards.task} {wildcards.site} {wildcards.probe_kind} probes ({settings.regime})"),
)
(predictions,), index = predict_stacks(stacks, test, batch_size=64)
table = WeightTable.read_tsv(inputs.dataset, wildcards.task)
write_probe_results(
    ProbeOutputs(**{key: snakemake.output[key] for key in ("table", "predictions", "summary")}),
    wildcards.model, wildcards.task, wildcards.site, params.layers, variants, predictions, index, test.prompts, test.targets,
    mean_baseline_mse(torch.as_tensor(table.weights[table.train_ids]), test.targets), len(train), settings,
    {**summary, "source": "shards"},
)
