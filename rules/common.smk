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
from minormech.random_init import random_init_id, random_init_spec
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
# Control models (controls.random_init): a randomly initialised copy of each model's
# architecture, run through the unfiltered probes only. PIPELINE_MODELS is every model a
# job may run: the analysed ones and their controls.
# A model trained from scratch (`train:`, the positive control) gets none: it is a control
# itself, and its untrained state is exactly such a model.
RANDOM_INIT_MODELS = {random_init_id(m): random_init_spec(spec) for m, spec in MODELS.items() if spec.source != "trained"} if config["controls"]["random_init"] else {}
clashing = sorted(set(MODELS) & set(RANDOM_INIT_MODELS))
if clashing:
    sys.exit(f"config error: models: id {clashing[0]!r} is the name of a random-init control; rename it or set controls.random_init: false")
PIPELINE_MODELS = {**MODELS, **RANDOM_INIT_MODELS}
# Models whose tokenizer a trained model uses make the prompts it reads, configured or not
# (rules/models.smk prepares them).
TOKENIZER_MODELS = sorted({spec.location for spec in MODELS.values() if spec.source == "trained"} - set(PIPELINE_MODELS))


STORAGE_PLAN = plan_storage(config, PIPELINE_MODELS)
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
    model="|".join([*PIPELINE_MODELS, *TOKENIZER_MODELS]),
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
    return layers_for(config, PIPELINE_MODELS[model_id])


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


def prompt_model(model_id):
    """The model whose prompt files `model_id` reads. Prompts depend only on the tokenizer,
    and a control model (random-init, or trained on the tasks) has its base model's: it
    reads the very prompts its base reads, so the two differ only in their weights."""
    spec = PIPELINE_MODELS[model_id]
    return spec.location if spec.source in ("random_init", "trained") else model_id


def prompts_of(model_id, task, prompt_set):
    return f"results/{prompt_model(model_id)}/prompts/{task}/{prompt_set}.jsonl"


def prompt_input(prompt_set=None, tasks=None):
    """An input function: the job's model's prompt file of `prompt_set` (None = the job's
    {prompt_set} wildcard) for the job's task, or the list of those of `tasks`."""

    def files(wildcards):
        chosen = prompt_set or wildcards.prompt_set
        if tasks is None:
            return prompts_of(wildcards.model, wildcards.task, chosen)
        return [prompts_of(wildcards.model, task, chosen) for task in tasks]

    return files


#: Positive-control models trained from scratch (`train:` in their entry): rule
#: train_control_model makes them; prepare_model the models with weights from elsewhere,
#: and those whose tokenizer a trained one uses, configured or not.
TRAINED_MODELS = [model for model, spec in MODELS.items() if spec.source == "trained"]
PREPARED_MODELS = sorted(
    {model for model, spec in MODELS.items() if spec.source in ("gguf_package", "hub", "path")}
    | {MODELS[model].location for model in TRAINED_MODELS}
)


def model_entry(model_id):
    """A model's `models:` entry; a tokenizer-only model that is not configured is its id."""
    return next((entry for entry in config["models"] if entry["id"] == model_id), {"id": model_id})


PAIRS = ["-".join(pair) for pair in config["task_pairs"]]
FILTER_PAIR = config["task_pairs"][0]


wildcard_constraints:
    pair="|".join(PAIRS),
    probe_kind="|".join(PROBE_KINDS),


def probe_inputs(wildcards):
    """Shards and prompts of one (model, task); filtered probes also need the first pair's xi."""
    inputs = {
        "dataset": f"results/datasets/{wildcards.task}.tsv",
        "train_prompts": prompts_of(wildcards.model, wildcards.task, "probe_train"),
        "test_prompts": prompts_of(wildcards.model, wildcards.task, "probe_test"),
        "train_shards": shard_files(wildcards.model, wildcards.task, "probe_train"),
        "test_shards": shard_files(wildcards.model, wildcards.task, "probe_test"),
    }
    if wildcards.probe_kind == "filtered":
        inputs["xi"] = f"results/{wildcards.model}/xi/{'-'.join(FILTER_PAIR)}.safetensors"
    return inputs


def probe_report_params():
    """What a probe table reports beside the probes (minormech.probe_results.ProbeReport):
    the model-free controls, the bootstrap settings and the seed of both."""
    controls = {key: config["controls"][key] for key in ("least_squares", "control_task")}
    return canonical({"controls": controls, "uncertainty": config["uncertainty"], "seed": config["seed"]})


def probe_params(*unused):
    """The probe section as job params, without `source` (the rule itself is the source)
    and the keys a rule does not read, so that editing those reruns no probe job."""
    return canonical({key: value for key, value in config["probe"].items() if key not in ("source", *unused)})


def stream_outputs(suffix, kinds=PROBE_KINDS):
    """One stream job's files: every site and probe kind of one (model, task), site-major
    (the order workflow/scripts/stream_probes.py writes them in)."""
    return expand("results/{{model}}/probes/{{task}}/{site}/{kind}{suffix}", site=SITES, kind=kinds, suffix=suffix)


def attribution_inputs(wildcards):
    """Attribution prompts; expected_gradients also reads probe-test shards of every task
    (its baseline activations)."""
    inputs = {
        "prompts": prompts_of(wildcards.model, wildcards.task, "attribution"),
        "model": model_manifest(wildcards),
    }
    if config["attribution"]["method"] == "expected_gradients":
        for task in TASKS:
            inputs[f"baseline_shards_{task}"] = shard_files(wildcards.model, task, "probe_test")
    return inputs


def summary_inputs(wildcards):
    """Every table and predictions file a model's summary reads, named
    <kind>__<site>__<task> (workflow/scripts/summary.py splits the names)."""
    model = wildcards.model
    inputs = {f"dataset__{task}": f"results/datasets/{task}.tsv" for task in TASKS}
    for site in SITES:
        for task in TASKS:
            inputs[f"unfiltered__{site}__{task}"] = f"results/{model}/probes/{task}/{site}/unfiltered.csv"
            if random_init_id(model) in RANDOM_INIT_MODELS:
                inputs[f"random_init__{site}__{task}"] = f"results/{random_init_id(model)}/probes/{task}/{site}/unfiltered.csv"
        for task in FILTER_PAIR:
            inputs[f"filtered__{site}__{task}"] = f"results/{model}/probes/{task}/{site}/filtered_predictions.safetensors"
        inputs[f"patching__{site}"] = f"results/{model}/patching/{site}.csv"
        inputs[f"patching_pairs__{site}"] = f"results/{model}/patching/{site}_pairs.csv"
    return inputs


def random_init_mem_mb(model_id):
    """Memory of drawing a random-init control: its parameters (about 12 hidden^2 per layer
    plus embeddings of up to 128k tokens, in and out) at 4 bytes, times 1.5; at least 4 GB."""
    spec = RANDOM_INIT_MODELS[model_id]
    hidden = spec.site_widths["o"]
    parameters = 12 * hidden**2 * spec.num_layers + 2 * 128_256 * hidden
    return max(4000, int(parameters * 4 * 1.5 / 1e6))


HEAD_FIGURES = ["heads_increase", "heads_knockout", "heads_attention", "heads_xi"]


def head_figure_inputs(wildcards):
    """What one head figure reads: the per-head tables of the filter pair's tasks, their
    attention rows, or the per-head xi."""
    if wildcards.figure == "heads_xi":
        return {"xi": f"results/{wildcards.model}/heads/xi.csv"}
    suffix = "_attention" if wildcards.figure == "heads_attention" else ""
    return {"tables": [f"results/{wildcards.model}/heads/{task}{suffix}.csv" for task in FILTER_PAIR]}
