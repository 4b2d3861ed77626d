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
    if prompt_set == "probe_test":
        return config["test_weights"] * config["prompts"]["probe_test_per_weight"]
    return config["prompts"][prompt_set]


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


PAIRS = ["-".join(pair) for pair in config["task_pairs"]]
FILTER_PAIR = config["task_pairs"][0]


wildcard_constraints:
    pair="|".join(PAIRS),
    probe_kind="unfiltered|filtered",


def probe_inputs(wildcards):
    """Shards and prompts of one (model, task); filtered probes also need the first pair's xi."""
    inputs = {
        "dataset": f"results/datasets/{wildcards.task}.tsv",
        "train_prompts": f"results/{wildcards.model}/prompts/{wildcards.task}/probe_train.jsonl",
        "test_prompts": f"results/{wildcards.model}/prompts/{wildcards.task}/probe_test.jsonl",
        "train_shards": shard_files(wildcards.model, wildcards.task, "probe_train"),
        "test_shards": shard_files(wildcards.model, wildcards.task, "probe_test"),
    }
    if wildcards.probe_kind == "filtered":
        inputs["xi"] = f"results/{wildcards.model}/xi/{'-'.join(FILTER_PAIR)}.safetensors"
    return inputs


def attribution_inputs(wildcards):
    """Attribution prompts; expected_gradients also reads probe-test shards of every task
    (its baseline activations)."""
    inputs = {
        "prompts": f"results/{wildcards.model}/prompts/{wildcards.task}/attribution.jsonl",
        "model": model_manifest(wildcards),
    }
    if config["attribution"]["method"] == "expected_gradients":
        for task in TASKS:
            inputs[f"baseline_prompts_{task}"] = f"results/{wildcards.model}/prompts/{task}/probe_test.jsonl"
            inputs[f"baseline_shards_{task}"] = shard_files(wildcards.model, task, "probe_test")
    return inputs
