"""Make one model of the run plan and write its manifest, by how its weights are made:
dequantized from the embedded GGUF, loaded from a local path or a hub download, drawn at
random (the random-init control and the shape-exact models; minormech.random_init) or trained on the tasks (the
positive control, from scratch or from the weights of the model whose tokenizer it uses;
minormech.control_model)."""

import json
import os
from pathlib import Path

from minormech.control_model import Runtime, TrainingPrompts, TrainSettings, save, train
from minormech.models import ModelManifest, load_model, load_tokenizer, prepare_model, resolve_model_spec, set_threads
from minormech.random_init import prepare_random_init, prepare_shaped
from minormech.runlog import job_logger, progress
from minormech.tasks import WeightTable

log = job_logger(snakemake.log[0])
set_threads(snakemake.threads)
recipe, inputs, model_id = snakemake.params.recipe, snakemake.input, snakemake.wildcards.model
out_dir = Path(snakemake.output[0]).parent


def trained_model():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # prompt-building workers fork after the tokenizer ran
    tables = {task: WeightTable.read_tsv(path, task) for task, path in zip(recipe["tasks"], inputs.datasets)}
    base = ModelManifest.read(inputs.tokenizer)
    settings, compute = TrainSettings(**recipe["train"]), recipe["compute"]
    tokenizer, pretrained = load_tokenizer(base), None
    if settings.init == "pretrained":
        pretrained, tokenizer = load_model(base, "cpu", "float32")
        log.info("fine-tuning the weights of %s (%s)", base.id, base.load_from)
    model, record = train(
        settings,
        TrainingPrompts(recipe["tasks"], tables, tokenizer, recipe["max_prompt_tokens"]),
        Runtime(compute["device"], compute["dtype"], snakemake.threads),
        log=log,
        progress=progress(f"train {model_id}"),
        pretrained=pretrained,
    )
    log.info(
        "%d parameters, final loss %.4f, %.2f s/step",
        record["parameters"],
        record["final_loss"],
        record["seconds_per_step"],
    )
    return save(model, tokenizer, record, model_id, out_dir, out_dir / "training.json")


if recipe["made_by"] == "random_init":
    manifest = prepare_random_init(ModelManifest.read(inputs.base), out_dir, recipe["seed"])
elif recipe["made_by"] == "shaped":
    manifest = prepare_shaped(resolve_model_spec(recipe["entry"]), out_dir, recipe["seed"])
elif recipe["made_by"] == "trained":
    manifest = trained_model()
else:
    downloaded = json.loads(Path(inputs.download).read_text())["load_from"] if recipe["made_by"] == "hub" else None
    manifest = prepare_model(resolve_model_spec(recipe["entry"]), out_dir, downloaded)
manifest.write(snakemake.output[0])
log.info(
    "model %s (%s): load from %s, %d layers, widths %s",
    manifest.id,
    recipe["made_by"],
    manifest.load_from,
    manifest.num_layers,
    manifest.site_widths,
)
