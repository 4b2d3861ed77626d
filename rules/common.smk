# Shared helpers: config loading and validation, wildcard constraints, output paths.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)  # the minormech package, also without `pip install -e .`

from minormech.config import ConfigError, layers_for, load_schema, model_specs, validate_config
from minormech.prompts import PROMPT_SETS


configfile: "config/config.yaml"


try:
    validate_config(config, load_schema(workflow.source_path("../config/config.schema.yaml")))
except ConfigError as error:
    sys.exit(f"config error: {error}")

MODELS = {spec.id: spec for spec in model_specs(config)}
TASKS = list(config["tasks"])
SITES = list(config["sites"])
ENV = "../envs/minormech.yaml"
THREADS = config["compute"]["threads"]


wildcard_constraints:
    model="|".join(MODELS),
    task="|".join(TASKS),
    site="|".join(SITES),
    prompt_set="|".join(PROMPT_SETS),
    chunk=r"\d{3}",


def layers_of(model_id):
    return layers_for(config, MODELS[model_id])


def prompt_count(prompt_set):
    if prompt_set == "probe_train":
        return config["prompts"]["probe_train"]
    return config["test_weights"] * config["prompts"]["probe_test_per_weight"]


def chunk_names(prompt_set):
    return [f"{i:03d}" for i in range(config["activations"]["chunks"][prompt_set])]


def shard_files(model, task, prompt_set):
    return expand(
        "results/{model}/activations/{task}/{prompt_set}/chunk{chunk}.safetensors",
        model=model,
        task=task,
        prompt_set=prompt_set,
        chunk=chunk_names(prompt_set),
    )


def model_manifest(wildcards):
    return f"results/{wildcards.model}/model/manifest.json"
