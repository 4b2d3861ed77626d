"""Train the positive-control model, save it and write its manifest (minormech.control_model)."""
import os
from pathlib import Path

from minormech.control_model import TrainSettings, save, train
from minormech.models import ModelManifest, load_tokenizer, set_threads
from minormech.runlog import job_logger, progress
from minormech.tasks import WeightTable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # prompt-building workers are forked after the tokenizer ran
log = job_logger(snakemake.log[0])
set_threads(snakemake.threads)
params, model_id = snakemake.params, snakemake.wildcards.model
settings = TrainSettings(**params.train)
tables = {task: WeightTable.read_tsv(path, task) for task, path in zip(params.tasks, snakemake.input.datasets)}
tokenizer = load_tokenizer(ModelManifest.read(snakemake.input.tokenizer))
model, record = train(
    settings, params.tasks, tables, tokenizer, params.max_prompt_tokens, params.device, params.dtype,
    log=log, progress=progress(f"train {model_id}"), threads=snakemake.threads,
)
manifest = save(model, tokenizer, record, model_id, Path(snakemake.output.manifest).parent, snakemake.output.training)
manifest.write(snakemake.output.manifest)
log.info("model %s: %d parameters, final loss %.4f, %.2f s/step; load from %s", model_id, record["parameters"], record["final_loss"], record["seconds_per_step"], manifest.load_from)
