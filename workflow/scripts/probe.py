"""Train and test the probes of every layer of one (model, task, site): unfiltered, or the
four filtered variants of SPEC "Filter" (features masked at read time by the first task
pair's xi; no second copy of the shards)."""
import json
from dataclasses import asdict

import pandas as pd
import torch

from minormech.config import prompt_count
from minormech.models import resolve_device, set_threads
from minormech.probes import ProbeData, ProbeTraining, mean_baseline_mse, per_probe_mse, predict, train_probes
from minormech.prompts import read_prompts
from minormech.ranking import FILTER_VARIANTS, site_keep_masks, variant_name
from minormech.runlog import job_logger, progress
from minormech.hooks import hook_name
from minormech.shards import Shard, load_tensors, save_tensors
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
if wildcards.probe_kind == "filtered":
    xi = load_tensors(inputs.xi, [hook_name(wildcards.site, layer) for layer in params.layers])
    variants = [(variant_name(op, h), op, h) for op, h in FILTER_VARIANTS]
    masks = torch.stack([site_keep_masks(xi, wildcards.site, params.layers, op, h) for _, op, h in variants]).float()
else:
    variants, masks = [("unfiltered", "", 1.0)], None

probes, summary = train_probes(
    train, settings, max(train.max_length, test.max_length), feature_masks=masks, device=device,
    progress=progress(f"{wildcards.task} {wildcards.site} {wildcards.probe_kind} probes ({settings.regime})"),
)
predictions, index = predict(probes, test, batch_size=64, feature_masks=masks.to(device) if masks is not None else None)
targets = test.targets[index]
test_mse = per_probe_mse(predictions, targets)  # [V, L]
table = WeightTable.read_tsv(inputs.dataset, wildcards.task)
baseline = mean_baseline_mse(torch.as_tensor(table.weights[table.train_ids]), targets)
rows = []
for v, (name, op, h) in enumerate(variants):
    for l, layer in enumerate(params.layers):
        n_kept = int(masks[v, l].sum()) if masks is not None else None
        rows.append({"model": wildcards.model, "task": wildcards.task, "site": wildcards.site, "variant": name, "op": op, "h": h,
                     "layer": layer, "test_mse": test_mse[v, l].item(), "baseline_mse": baseline, "n_kept": n_kept,
                     "n_train": len(train), "n_test": len(test)})
pd.DataFrame(rows).to_csv(snakemake.output.table, index=False)
save_tensors(
    {"predictions": predictions.contiguous(), "targets": targets, "prompt_ids": torch.tensor([test.prompts[i].id for i in index])},
    snakemake.output.predictions,
    metadata={"layers": json.dumps(params.layers), "variants": json.dumps([v[0] for v in variants])},
)
with open(snakemake.output.summary, "w") as handle:
    json.dump({**summary, "settings": asdict(settings), "variants": [v[0] for v in variants]}, handle, indent=2)
for v, (name, _, _) in enumerate(variants):
    log.info("%s test MSE per layer: %s (baseline %.2f)", name, [round(x, 2) for x in test_mse[v].tolist()], baseline)
