# Shared helpers: config loading and validation, wildcard constraints, output paths.
import os
import shutil
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)  # the minormech package, also without `pip install -e .`

from minormech.config import ConfigError, layers_for, load_schema, model_specs, validate_config
from minormech.config import prompt_count as config_prompt_count
from minormech.probe_results import PROBE_KINDS
from minormech.prompts import PROMPT_SETS
from minormech.storage import format_plan, plan_storage, test_shards_needed


configfile: "config/config.yaml"


# Nothing is written outside the working directory except caches the user placed: matplotlib
# would keep its font cache in ~/.cache/matplotlib, so unless MPLCONFIGDIR is set it goes
# under .snakemake/ here (jobs, local or SLURM, inherit this environment).
os.environ.setdefault("MPLCONFIGDIR", str(Path(".snakemake/matplotlib").resolve()))


try:
    validate_config(config, load_schema(workflow.source_path("../config/config.schema.yaml")))
except ConfigError as error:
    sys.exit(f"config error: {error}")

MODELS = {spec.id: spec for spec in model_specs(config)}


STORAGE_PLAN = plan_storage(config, MODELS)
PROBE_SOURCES = {plan.model: plan.source for plan in STORAGE_PLAN}
SHARD_MODELS = [model for model, source in PROBE_SOURCES.items() if source == "shards"]
STREAM_MODELS = [model for model, source in PROBE_SOURCES.items() if source == "stream"]


def planned_shard_bytes():
    """Print the storage plan; stop when the shards this run writes exceed
    storage.limit_gb. Returns their total."""
    planned = sum(plan.written_bytes(test_shards_needed(config)) for plan in STORAGE_PLAN)
    print(format_plan(STORAGE_PLAN, config), file=sys.stderr)
    if planned > config["storage"]["limit_gb"] * 1e9:
        remedy = "set probe.source: stream (or auto), " if SHARD_MODELS else "use another attribution.method than expected_gradients, "
        sys.exit(
            f"storage error: the configured shards need about {planned / 1e9:,.0f} GB, more than "
            f"storage.limit_gb={config['storage']['limit_gb']}; {remedy}restrict sites/layers/prompts, or raise the limit"
        )
    return planned


PLANNED_BYTES = planned_shard_bytes() if workflow.is_main_process else 0


onstart:
    # Runs before the first job of a real run (never in a dry run): the free-disk check.
    if config["storage"]["check_free_disk"]:
        existing = sum(path.stat().st_size for path in Path("results").glob("*/activations/**/*.safetensors"))
        Path("results").mkdir(exist_ok=True)
        free = shutil.disk_usage("results").free
        if PLANNED_BYTES - existing > free:
            sys.exit(
                f"storage error: about {(PLANNED_BYTES - existing) / 1e9:,.0f} GB of shards still to write but only "
                f"{free / 1e9:,.0f} GB free under results/; free space or set storage.check_free_disk: false"
            )
TASKS = list(config["tasks"])
SITES = list(config["sites"])
ENV = "../envs/minormech.yaml"
THREADS = config["compute"]["threads"]
# Rules that run the model (and probes) ask for one GPU when the config computes on CUDA;
# the SLURM executor turns the `gpu` resource into --gpus (see slurm/config.yaml).
GPUS = 1 if config["compute"]["device"].startswith("cuda") else 0


wildcard_constraints:
    model="|".join(MODELS),
    task="|".join(TASKS),
    site="|".join(SITES),
    prompt_set="|".join(PROMPT_SETS),
    chunk=r"\d{3}",


def canonical(value):
    """A config section with its keys sorted at every level. Snakemake reruns a job when the
    text of its params changes, and a dict's text follows its key order: without this, a
    config rewritten with keys in another order (yaml.safe_dump sorts them) would rerun
    every GPU job whose params hold a section."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def layers_of(model_id):
    return layers_for(config, MODELS[model_id])


def prompt_count(prompt_set):
    return config_prompt_count(config, prompt_set)


def patching_layers(model_id):
    """Layers patched for one model: `patching.layers` ('all' = the analysed layers)."""
    chosen = config["patching"]["layers"]
    return layers_of(model_id) if chosen == "all" else [l for l in layers_of(model_id) if l in chosen]


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
    probe_kind="|".join(PROBE_KINDS),


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


def probe_params(*unused):
    """The probe section as job params, without `source` (the rule itself is the source)
    and the keys a rule does not read, so that editing those reruns no probe job."""
    return canonical({key: value for key, value in config["probe"].items() if key not in ("source", *unused)})


def stream_outputs(suffix):
    """One stream job's files: every site and probe kind of one (model, task), site-major
    (the order workflow/scripts/stream_probes.py writes them in)."""
    return expand("results/{{model}}/probes/{{task}}/{site}/{kind}{suffix}", site=SITES, kind=PROBE_KINDS, suffix=suffix)


def attribution_inputs(wildcards):
    """Attribution prompts; expected_gradients also reads probe-test shards of every task
    (its baseline activations)."""
    inputs = {
        "prompts": f"results/{wildcards.model}/prompts/{wildcards.task}/attribution.jsonl",
        "model": model_manifest(wildcards),
    }
    if config["attribution"]["method"] == "expected_gradients":
        for task in TASKS:
            inputs[f"baseline_shards_{task}"] = shard_files(wildcards.model, task, "probe_test")
    return inputs
