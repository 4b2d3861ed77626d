"""Train and test the unfiltered probes of every layer of one (model, task, site)."""
import json
from dataclasses import asdict

import pandas as pd
import torch
from safetensors.torch import save_file

from minormech.models import resolve_device, set_threads
from minormech.probes import ProbeData, ProbeTraining, mean_baseline_mse, per_probe_mse, predict, train_probes
from minormech.prompts import read_prompts
from minormech.runlog import job_logger, progress
from minormech.shards import Shard
from minormech.tasks import WeightTable

log = job_logger(snakemake.log[0])
inputs, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
set_threads(snakemake.threads)
device = resolve_device(params.device)
settings = ProbeTraining.from_config(params.probe)


def site_data(prompt_file, shard_files, prompt_set):
    shards = [Shard(path).expect(model_id=wildcards.model, task=wildcards.task, prompt_set=prompt_set) for path in shard_files]
    return ProbeData(shards, read_prompts(prompt_file), wildcards.site, params.layers, params.probe["keep_in_memory"])


train = site_data(inputs.train_prompts, inputs.train_shards, "probe_train")
test = site_data(inputs.test_prompts, inputs.test_shards, "probe_test")
probes, summary = train_probes(
    train, settings, max(train.max_length, test.max_length), device=device,
    progress=progress(f"{wildcards.task} {wildcards.site} probe training ({settings.regime})"),
)
predictions, index = predict(probes, test, batch_size=64)
targets = test.targets[index]
test_mse = per_probe_mse(predictions, targets)[0]
table = WeightTable.read_tsv(inputs.dataset, wildcards.task)
baseline = mean_baseline_mse(torch.as_tensor(table.weights[table.train_ids]), targets)

pd.DataFrame(
    {
        "model": wildcards.model, "task": wildcards.task, "site": wildcards.site, "layer": params.layers,
        "test_mse": test_mse.tolist(), "baseline_mse": baseline, "n_train": len(train), "n_test": len(test),
    }
).to_csv(snakemake.output.table, index=False)
save_file(
    {"predictions": predictions[0].contiguous(), "targets": targets, "prompt_ids": torch.tensor([test.prompts[i].id for i in index])},
    snakemake.output.predictions,
    metadata={"layers": json.dumps(params.layers)},
)
with open(snakemake.output.summary, "w") as handle:
    json.dump({**summary, "settings": asdict(settings)}, handle, indent=2)
log.info("test MSE per layer: %s (baseline %.2f)", [round(v, 2) for v in test_mse.tolist()], baseline)
