"""The run plan: which models a run has, what each one is, which stages it gets, and where
every output lives.

The rules of the workflow always exist; this plan decides which of their targets a config
asks for. ``RunPlan.from_config(config)`` is built once when Snakemake parses the workflow
(rules/common.smk) and every rule, input function and target asks it. Nothing here imports
Snakemake, so the plan is tested on its own.

Model kinds (one row per model a job may run):

- ``analysed``: a configured model with weights from elsewhere (the embedded GGUF, the hub,
  a local path), or a shape-exact model (a known architecture with seeded random weights).
  It runs the whole pipeline; only a model with weights from elsewhere gets a random-init
  copy.
- ``trained``: a configured positive control trained from scratch on the tasks (``train:``
  in its entry). It runs the whole pipeline on the prompts of the model whose tokenizer it
  uses, and gets no random-init copy: its untrained state is such a model.
- ``random_init``: the randomly initialised copy of an analysed model's architecture
  (``controls.random_init``), run through the unfiltered probes on its base's prompts.
- ``tokenizer``: a model whose tokenizer a trained model uses but which is not analysed; it
  only makes the prompt files.

Every output path comes from one function below. Called with no arguments a function returns
the rule's pattern (``probe_table()`` is ``results/{model}/probes/{task}/{site}/{probe_kind}.csv``);
called with values it returns that file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from minormech.config import ConfigError, check_layer_settings, layers_for, model_specs, prompt_count
from minormech.models import (
    ModelSpec,
    architecture_config,
    architecture_parameters,
    architectures,
    resolve_model_spec,
    weights_fingerprint,
)
from minormech.probe_results import PROBE_KINDS
from minormech.random_init import random_init_id, random_init_spec
from minormech.shards import SHARD_SUFFIXES
from minormech.storage import ModelPlan, plan_storage, probe_sets, test_shards_needed

RESULTS = "results"
LOGS = "logs"

#: The head-level figures (rule plot_heads), one target each.
HEAD_FIGURES = ("heads_increase", "heads_knockout", "heads_attention", "heads_xi")

#: The model kinds of the module docstring, and the stages each gets beyond its model.
KIND_STAGES: dict[str, frozenset[str]] = {
    "analysed": frozenset({"prompts", "probes", "filtered_probes", "attribution", "patching", "heads", "summary"}),
    "trained": frozenset({"probes", "filtered_probes", "attribution", "patching", "heads", "summary"}),
    "random_init": frozenset({"probes"}),
    "tokenizer": frozenset({"prompts"}),
}


# ---------------------------------------------------------------------------------------
# Output paths: one function per kind of file. Rules call them without arguments (the
# wildcard pattern), input functions and targets with values.


def dataset(task: str = "{task}") -> str:
    return f"{RESULTS}/datasets/{task}.tsv"


def model_dir(model: str = "{model}") -> str:
    return f"{RESULTS}/{model}/model"


def manifest(model: str = "{model}") -> str:
    return f"{model_dir(model)}/manifest.json"


def download_record(model: str = "{model}") -> str:
    return f"{model_dir(model)}/download.json"


def probe_input(prompt_set: str, kind: str) -> str:
    """A probe job's input name for a prompt set's `prompts` or `shards`: train_prompts,
    test_shards, control_prompts, ..."""
    return f"{prompt_set.removeprefix('probe_')}_{kind}"


def prompt_file(model: str = "{model}", task: str = "{task}", prompt_set: str = "{prompt_set}") -> str:
    return f"{RESULTS}/{model}/prompts/{task}/{prompt_set}.jsonl"


def shard(
    model: str = "{model}",
    task: str = "{task}",
    prompt_set: str = "{prompt_set}",
    chunk: str = "{chunk}",
    suffix: str = ".safetensors",
) -> str:
    """An activation shard; its suffix names its format (minormech.shards.SHARD_SUFFIXES)."""
    return f"{RESULTS}/{model}/activations/{task}/{prompt_set}/chunk{chunk}{suffix}"


def probe_file(
    model: str = "{model}", task: str = "{task}", site: str = "{site}", kind: str = "{probe_kind}", suffix: str = ".csv"
) -> str:
    """One probe file: suffix ``.csv`` (test MSE per layer), ``.json`` (training summary) or
    ``_predictions.safetensors`` (test predictions of every seed)."""
    return f"{RESULTS}/{model}/probes/{task}/{site}/{kind}{suffix}"


#: The files one probe job leaves, by output name.
PROBE_SUFFIXES = {"table": ".csv", "predictions": "_predictions.safetensors", "summary": ".json"}


def stream_dir(model: str = "{model}", task: str = "{task}") -> str:
    """What one stream job trained: every site and probe kind of one (model, task), in
    ``{site}/{kind}{suffix}`` files that rule probe then puts in place."""
    return f"{RESULTS}/{model}/stream/{task}"


def attribution_map(model: str = "{model}", task: str = "{task}") -> str:
    return f"{RESULTS}/{model}/attribution/{task}.safetensors"


def xi_map(model: str = "{model}", pair: str = "{pair}") -> str:
    return f"{RESULTS}/{model}/xi/{pair}.safetensors"


def patching_file(model: str = "{model}", site: str = "{site}", table: str = "", suffix: str = ".csv") -> str:
    """Patching counts (table ``""``), per-pair outcomes (``"_pairs"``), accuracy
    (``"_accuracy"``), or, with suffix ``".json"``, the prompt files they were computed from
    (``"_inputs"``, minormech.provenance)."""
    return f"{RESULTS}/{model}/patching/{site}{table}{suffix}"


def head_table(model: str = "{model}", task: str = "{task}", table: str = "") -> str:
    """Per-head table of one task (table ``""``), its attention rows (``"_attention"``), or
    with task ``"xi"`` the per-head xi."""
    return f"{RESULTS}/{model}/heads/{task}{table}.csv"


def figure_dir(model: str = "{model}") -> str:
    return f"{RESULTS}/{model}/figures"


def figure(model: str = "{model}", name: str = "{figure}", ext: str = "pdf") -> str:
    return f"{figure_dir(model)}/{name}.{ext}"


def summary(model: str = "{model}", ext: str = "md") -> str:
    return f"{RESULTS}/{model}/summary.{ext}"


def log(rule: str, *wildcards: str) -> str:
    """``logs/{rule}/{w1}/{w2}.log``: one log per job, named by its wildcards."""
    return "/".join([LOGS, rule, *wildcards]) + ".log"


def benchmark(rule: str, *wildcards: str) -> str:
    """Snakemake's benchmark file of one job (wall time, peak memory), beside the logs."""
    return "/".join([LOGS, "benchmarks", rule, *wildcards]) + ".tsv"


def pair_name(pair) -> str:
    return "-".join(pair)


# ---------------------------------------------------------------------------------------
# The plan.


def packaged_architecture(spec: ModelSpec) -> str | None:
    """The packaged architecture (minormech/architectures) a model has, if any: a
    shape-exact model's, a Llama hub model's, or that of a random-init copy of either."""
    names = (spec.location, spec.id, spec.id.removesuffix("-random-init"))
    return next((name for name in names if name in architectures()), None)


def parameter_bound(spec: ModelSpec) -> int | None:
    """A model's parameter count for memory requests: exact when its architecture is
    packaged (the shape-exact models, the Llama hub models and their random-init copies:
    Llama-3.2-3B 3.21 G, Llama-3.1-8B 8.03 G), else an upper bound from its widths and depth
    (16 hidden^2 per layer, full-width attention and a 4 x hidden MLP, plus input and output
    embeddings of 128,256 tokens). None when the shape is not known before the model is made."""
    packaged = packaged_architecture(spec)
    if packaged:
        return architecture_parameters(architecture_config(packaged))
    if spec.num_layers is None or "o" not in spec.site_widths:
        return None
    hidden = spec.site_widths["o"]
    return 16 * hidden**2 * spec.num_layers + 2 * 128_256 * hidden


def _fine_tuned(entry: dict[str, Any]) -> bool:
    """Whether a `models:` entry is a model trained further from its tokenizer model's weights."""
    return entry.get("train", {}).get("init", "scratch") == "pretrained"


def _random_init_bases(config: dict[str, Any], configured: dict[str, ModelSpec]) -> list[ModelSpec]:
    """The architectures that get a random-init control: every analysed model's, and for a
    fine-tuned model the architecture it starts from (untrained weights of the same shape
    are its reference too), each once."""
    bases = {spec.id: spec for spec in configured.values() if spec.source not in ("trained", "shaped")}
    for entry in config["models"]:
        if _fine_tuned(entry) and entry["train"]["tokenizer_of"] not in bases:
            bases[entry["train"]["tokenizer_of"]] = resolve_model_spec({"id": entry["train"]["tokenizer_of"]})
    return list(bases.values())


@dataclass(frozen=True)
class PlannedModel:
    """One row of the run plan: a model a job may run."""

    id: str
    kind: str  # a key of KIND_STAGES
    spec: ModelSpec
    entry: dict[str, Any]  # its `models:` entry ({"id": id} for an unconfigured tokenizer model)
    prompts_of: str  # the model whose prompt files it reads (prompts depend only on the tokenizer)
    base: str | None = None  # random_init: the analysed model; trained: the tokenizer's model
    probe_source: str | None = None  # shards | stream (None: it trains no probes)
    # None while `layers: all` waits for the layer count (RunPlan.depth_pending)
    layers: tuple[int, ...] | None = ()
    patching_layers: tuple[int, ...] | None = ()
    knockout_layers: tuple[int, ...] | None = ()  # layers whose heads the head views knock out

    @property
    def stages(self) -> frozenset[str]:
        return KIND_STAGES[self.kind]

    @property
    def made_by(self) -> str:
        """How its weights are made: gguf_package, hub, path, shaped, random_init or trained."""
        return self.spec.source

    @property
    def probe_kinds(self) -> tuple[str, ...]:
        if "probes" not in self.stages:
            return ()
        return PROBE_KINDS if "filtered_probes" in self.stages else ("unfiltered",)


@dataclass(frozen=True)
class RunPlan:
    """Every model of a run with its stages, and the run-wide facts rules need."""

    config: dict[str, Any]
    models: dict[str, PlannedModel]
    storage: tuple[ModelPlan, ...]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RunPlan:
        """The plan of a validated config; a model id that clashes with a control's is a ConfigError."""
        configured = {spec.id: spec for spec in model_specs(config)}
        rows: dict[str, PlannedModel] = {}
        for spec in configured.values():
            kind = "trained" if spec.source == "trained" else "analysed"
            entry = next(e for e in config["models"] if e["id"] == spec.id)
            prompts_of = spec.location if kind == "trained" else spec.id
            base = spec.location if kind == "trained" else None
            rows[spec.id] = PlannedModel(spec.id, kind, spec, entry, prompts_of, base)
        if config["controls"]["random_init"]:
            for spec in _random_init_bases(config, configured):
                control = random_init_spec(spec)
                if control.id in configured:
                    raise ConfigError(
                        f"models: id {control.id!r} is the name of a random-init control; "
                        "rename it or set controls.random_init: false"
                    )
                rows[control.id] = PlannedModel(
                    control.id, "random_init", control, {"id": control.id}, spec.id, spec.id
                )
        for row in list(rows.values()):
            if row.kind == "trained" and row.base not in rows:
                spec = resolve_model_spec({"id": row.base})
                rows[row.base] = PlannedModel(row.base, "tokenizer", spec, {"id": row.base}, row.base)
        probe_models = {m: row.spec for m, row in rows.items() if row.kind != "tokenizer"}
        storage = tuple(plan_storage(config, probe_models))
        sources = {plan.model: plan.source for plan in storage}
        for model_id, row in rows.items():
            rows[model_id] = cls._complete(config, row, sources.get(model_id))
        return cls(config, rows, storage)

    @staticmethod
    def _complete(config: dict[str, Any], row: PlannedModel, source: str | None) -> PlannedModel:
        listed = layers_for(config, row.spec) if row.kind != "tokenizer" else []
        if listed is None:  # known once the config.json is downloaded; the knockout figure is planned
            knocked = None if config["heads"]["knockout"] else ()
            return replace(row, probe_source=source, layers=None, patching_layers=None, knockout_layers=knocked)
        layers = tuple(listed)
        chosen = config["patching"]["layers"]
        patched = layers if chosen == "all" else tuple(layer for layer in layers if layer in chosen)
        heads = config["heads"]
        knocked = () if not heads["knockout"] else layers
        if heads["knockout"] and heads["knockout_layers"] != "all":
            knocked = tuple(layer for layer in layers if layer in heads["knockout_layers"])
        return replace(row, probe_source=source, layers=layers, patching_layers=patched, knockout_layers=knocked)

    # -- rows ---------------------------------------------------------------------------

    def model(self, model_id: str) -> PlannedModel:
        return self.models[model_id]

    def known(self, model_id: str) -> PlannedModel:
        """A model's row with its layers known: what the params of a job that runs it read.
        Such a job's input waits for the download (depth_pending), so this is never early."""
        row = self.model(model_id)
        if row.layers is None:
            raise RuntimeError(f"model {model_id!r}: its layer count was read before its config.json was downloaded")
        return row

    def depth_pending(self, model_id: str) -> str | None:
        """The hub model whose config.json a model's layers wait for (it, or the base of its
        random-init control), or None when they are known. With ``layers: all`` a hub model's
        layer count comes from its config.json, which a new model's cache does not hold until
        checkpoint download_model has run; the jobs whose params name layers wait for it."""
        row = self.model(model_id)
        if row.layers is not None:
            return None
        return row.base if row.kind == "random_init" else model_id

    def learn_depth(self, hub_id: str) -> None:
        """Complete the rows of hub model `hub_id` and of its random-init control from its
        config.json, now in the model cache, and check the settings that depend on its
        layer count (a ConfigError if, say, none of patching.layers is one of its layers)."""
        row = self.model(hub_id)
        spec = resolve_model_spec(row.entry, self.config["model_cache"])
        if spec.num_layers is None:
            raise ConfigError(
                f"model {hub_id!r}: its config.json is not in the model cache {self.config['model_cache']!r} "
                f"although {download_record(hub_id)} records its download; delete that file and rerun"
            )
        check_layer_settings(self.config)
        for model_id, known in {hub_id: spec, random_init_id(hub_id): random_init_spec(spec)}.items():
            if model_id in self.models:
                grown = replace(self.models[model_id], spec=known)
                self.models[model_id] = self._complete(self.config, grown, grown.probe_source)

    def head_size(self, model_id: str) -> int | None:
        """Features per attention head (the q, k and v sites' heads alike), for figure 2's
        head boundaries; None while the model's shape is unknown (a hub model before its
        config.json is downloaded)."""
        spec = self.model(model_id).spec
        if not spec.query_heads or "q" not in spec.site_widths:
            return None
        return spec.site_widths["q"] // spec.query_heads

    def ids(self, *kinds: str) -> list[str]:
        """Model ids of the given kinds (all when none), in plan order."""
        return [m for m, row in self.models.items() if not kinds or row.kind in kinds]

    def with_stage(self, stage: str) -> list[str]:
        return [m for m, row in self.models.items() if stage in row.stages]

    @property
    def analysed(self) -> list[str]:
        """The models the figures and summaries describe (analysed and trained)."""
        return self.with_stage("summary")

    def random_init_of(self, model_id: str) -> str | None:
        """The random-init control a model's probes are read against: its own, or for a
        fine-tuned model that of the architecture it was fine-tuned from."""
        row = self.model(model_id)
        control = random_init_id(row.base if _fine_tuned(row.entry) else model_id)
        return control if control in self.models else None

    # -- run-wide facts -----------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        return list(self.config["tasks"])

    @property
    def sites(self) -> list[str]:
        return list(self.config["sites"])

    @property
    def pairs(self) -> list[str]:
        return [pair_name(pair) for pair in self.config["task_pairs"]]

    @property
    def filter_pair(self) -> list[str]:
        """The first task pair: its xi filters the probes and the patches (§4.2.2, §4.3)."""
        return list(self.config["task_pairs"][0])

    @property
    def compute(self) -> dict[str, str]:
        """Device and dtype of every model-running job (threads are the job's own)."""
        return {"device": self.config["compute"]["device"], "dtype": self.config["compute"]["dtype"]}

    @property
    def shard_suffix(self) -> str:
        """The suffix of this run's activation shards (activations.format)."""
        return SHARD_SUFFIXES[self.config["activations"]["format"]]

    @property
    def hdf5(self) -> dict[str, Any]:
        """How HDF5 shards are stored (activations.hdf5), for the activations rule."""
        return dict(sorted(self.config["activations"]["hdf5"].items()))

    @property
    def gpus(self) -> int:
        """GPUs a model-running job asks for: one when the config computes on CUDA."""
        return 1 if self.config["compute"]["device"].startswith("cuda") else 0

    @property
    def bootstrap(self) -> dict[str, Any]:
        """minormech.uncertainty.Bootstrap's fields: probes, patching, heads and the summary
        draw the same resamples."""
        uncertainty = self.config["uncertainty"]
        return {"n_boot": uncertainty["bootstrap"], "level": uncertainty["level"], "seed": self.config["seed"]}

    @property
    def probe_report(self) -> dict[str, Any]:
        """minormech.probe_job.ReportSettings' fields: the model-free references of a probe
        table (least-squares ceiling, control task) and its bootstrap."""
        controls = self.config["controls"]
        return {
            "least_squares": controls["least_squares"],
            "control_task": controls["control_task"],
            "bootstrap": self.bootstrap,
            "seed": self.config["seed"],
        }

    def prompt_count(self, prompt_set: str) -> int:
        return prompt_count(self.config, prompt_set)

    def prompt_recipe(self, prompt_set: str) -> dict[str, int | None]:
        """What a prompt set's file is made with (minormech.prompts.PromptRecipe, as a
        job's params): its writer records it and its readers expect it."""
        return {
            "seed": self.config["seed"],
            "max_prompt_tokens": self.config["prompts"]["max_prompt_tokens"],
            "count": self.prompt_count(prompt_set),
            "train_count": self.control_train_count(prompt_set),
        }

    def prompt_recipes(self, *prompt_sets: str) -> dict[str, dict[str, int | None]]:
        return {prompt_set: self.prompt_recipe(prompt_set) for prompt_set in prompt_sets}

    def control_train_count(self, prompt_set: str) -> int | None:
        """What the prompts of a set depend on besides their own count: the control-task
        evaluation prompts draw from the weights of the probe-training prompts."""
        return self.prompt_count("probe_train") if prompt_set == "probe_control" else None

    @property
    def probe_sets(self) -> tuple[str, ...]:
        """The prompt sets a probe job reads (minormech.storage.probe_sets)."""
        return probe_sets(self.config)

    def chunk_names(self, prompt_set: str) -> list[str]:
        return [f"{i:03d}" for i in range(self.config["activations"]["chunks"][prompt_set])]

    @property
    def test_shards_needed(self) -> bool:
        return test_shards_needed(self.config)

    # -- inputs -------------------------------------------------------------------------

    def prompts(self, model_id: str, task: str, prompt_set: str) -> str:
        """The prompt file a model reads: its prompt owner's (a control reads its base's)."""
        return prompt_file(self.model(model_id).prompts_of, task, prompt_set)

    def shards(self, model_id: str, task: str, prompt_set: str) -> list[str]:
        return [shard(model_id, task, prompt_set, chunk, self.shard_suffix) for chunk in self.chunk_names(prompt_set)]

    def xi(self, model_id: str) -> str:
        """The xi map that filters a model's probes and patches (the first pair's)."""
        return xi_map(model_id, pair_name(self.filter_pair))

    def model_inputs(self, model_id: str) -> dict[str, Any]:
        """What making a model reads: a random-init control its base, a trained model the
        datasets and its tokenizer's model (whose weights it starts from with init:
        pretrained), a hub model its download."""
        row = self.model(model_id)
        if row.made_by == "random_init":
            return {"base": manifest(row.base)}
        if row.made_by == "trained":
            return {"datasets": [dataset(task) for task in self.tasks], "tokenizer": manifest(row.base)}
        if row.made_by == "hub":
            return {"download": download_record(model_id)}
        return {}

    def model_recipe(self, model_id: str) -> dict[str, Any]:
        """What making a model depends on, by how it is made (the model job's params, so
        that only a change of these remakes it): a random-init control its base and the
        seed, a trained model its training settings, the tasks, the prompt budget and the
        compute settings, a local-path model its entry and its weights' fingerprint, any
        other its `models:` entry."""
        row = self.model(model_id)
        recipe: dict[str, Any] = {"made_by": row.made_by}
        if row.made_by == "random_init":
            return {**recipe, "base": row.base, "seed": self.config["seed"]}
        if row.made_by == "shaped":
            return {**recipe, "entry": row.entry, "seed": self.config["seed"]}
        if row.made_by == "trained":
            prompts = self.config["prompts"]["max_prompt_tokens"]
            return {
                **recipe,
                "train": row.entry["train"],
                "tasks": self.tasks,
                "max_prompt_tokens": prompts,
                "compute": self.compute,
            }
        if row.made_by == "path":  # weights replaced in place remake the manifest and all after it
            return {**recipe, "entry": row.entry, "weights": weights_fingerprint(row.spec.location)}
        return {**recipe, "entry": row.entry}

    def probe_inputs(self, model_id: str, task: str, site: str, kind: str) -> dict[str, Any]:
        """Shard mode: the shards, prompts and (filtered) xi; stream mode: the stream job's files."""
        row = self.model(model_id)
        if kind not in row.probe_kinds:
            raise ValueError(f"model {model_id} trains no {kind} probes; its probe kinds: {row.probe_kinds}")
        if row.probe_source == "stream":
            return {"stream": stream_dir(model_id, task)}
        shards = {"model": manifest(model_id)}
        for prompt_set in self._probe_sets_of(kind):
            shards[probe_input(prompt_set, "shards")] = self.shards(model_id, task, prompt_set)
        return {**self._probe_task_inputs(model_id, task, kind), **shards}

    def stream_inputs(self, model_id: str, task: str) -> dict[str, Any]:
        kinds = self.model(model_id).probe_kinds
        return {**self._probe_task_inputs(model_id, task, *kinds), "model": manifest(model_id)}

    def _probe_sets_of(self, *kinds: str) -> list[str]:
        """The prompt sets probes of these kinds read: the control-task evaluation prompts
        only beside unfiltered probes."""
        return [s for s in self.probe_sets if s != "probe_control" or "unfiltered" in kinds]

    def _probe_task_inputs(self, model_id: str, task: str, *kinds: str) -> dict[str, Any]:
        """What every probe job of a (model, task) reads whatever its source: the task's
        weights, its probe prompts and, for filtered probes, the xi map."""
        inputs = {"dataset": dataset(task)}
        for prompt_set in self._probe_sets_of(*kinds):
            inputs[probe_input(prompt_set, "prompts")] = self.prompts(model_id, task, prompt_set)
        return {**inputs, "xi": self.xi(model_id)} if "filtered" in kinds else inputs

    def trains_from_shards(self, model_id: str) -> bool:
        """Whether a model's probe jobs train (shard mode) rather than put a stream job's
        files in place: only then do they need the job's threads and a GPU."""
        return self.model(model_id).probe_source == "shards"

    def probe_settings(self, *unread: str) -> dict[str, Any]:
        """The `probe` section as a job's params, without `source` (the rule itself is the
        source) and the keys the rule does not read, so that editing those reruns no job."""
        return {key: value for key, value in self.config["probe"].items() if key not in ("source", *unread)}

    def attribution_inputs(self, model_id: str, task: str) -> dict[str, Any]:
        """Attribution prompts; expected gradients also read the probe-test shards of every
        task (its baseline activations) and their prompt files (which the shards are checked
        against and the map records)."""
        inputs: dict[str, Any] = {"prompts": self.prompts(model_id, task, "attribution"), "model": manifest(model_id)}
        if self.test_shards_needed:
            inputs["baseline_shards"] = [f for files in self.baseline_shards(model_id).values() for f in files]
            inputs["baseline_prompts"] = list(self.baseline_prompts(model_id).values())
        return inputs

    def rank_difference_inputs(self, model_id: str, pair: str) -> dict[str, str]:
        """The attribution maps of a task pair's two tasks (xi = rank(FA_task1) - rank(FA_task2))
        and the model's manifest, whose site widths the maps are checked against."""
        task1, task2 = next(p for p in self.config["task_pairs"] if pair_name(p) == pair)
        maps = {"task1": attribution_map(model_id, task1), "task2": attribution_map(model_id, task2)}
        return {**maps, "model": manifest(model_id)}

    def baseline_shards(self, model_id: str) -> dict[str, list[str]]:
        """Expected gradients' baseline shards per task (empty for other methods)."""
        if not self.test_shards_needed:
            return {}
        return {task: self.shards(model_id, task, "probe_test") for task in self.tasks}

    def baseline_prompts(self, model_id: str) -> dict[str, str]:
        """The prompt file of each task's baseline shards (empty for other methods)."""
        return {task: self.prompts(model_id, task, "probe_test") for task in self.baseline_shards(model_id)}

    def head_figure_inputs(self, model_id: str, name: str) -> list[str]:
        """What one head figure reads: the filter pair's per-head tables, their attention
        rows, or the per-head xi."""
        if name == "heads_xi":
            return [head_table(model_id, "xi")]
        table = "_attention" if name == "heads_attention" else ""
        return [head_table(model_id, task, table) for task in self.filter_pair]

    def fig1_inputs(self, model_id: str, site: str) -> dict[str, list[str]]:
        control = self.random_init_of(model_id)
        return {
            "tables": [probe_file(model_id, task, site, "unfiltered") for task in self.tasks],
            "random_init": [probe_file(control, task, site, "unfiltered") for task in self.tasks] if control else [],
            "summaries": [
                probe_file(model, task, site, "unfiltered", PROBE_SUFFIXES["summary"])
                for model in filter(None, (model_id, control))
                for task in self.tasks
            ],
        }

    def filtered_figure_inputs(self, model_id: str, site: str) -> dict[str, list[str]]:
        kinds = ("filtered", "unfiltered")
        return {
            **{kind: [probe_file(model_id, task, site, kind) for task in self.filter_pair] for kind in kinds},
            "summaries": [
                probe_file(model_id, task, site, kind, PROBE_SUFFIXES["summary"])
                for kind in kinds
                for task in self.filter_pair
            ],
        }

    def summary_files(self, model_id: str) -> dict[str, Any]:
        """Every file a model's summary reads, by role: datasets per task; per site the
        unfiltered tables (and the random-init control's) per task, the filtered
        predictions of the filter pair, and the patching tables; the model's accuracy on its
        unpatched patching prompts (the same prompts at every site: the first site's)."""
        control = self.random_init_of(model_id)
        sites = {}
        for site in self.sites:
            sites[site] = {
                "unfiltered": {task: probe_file(model_id, task, site, "unfiltered") for task in self.tasks},
                "unfiltered_predictions": {
                    task: probe_file(model_id, task, site, "unfiltered", PROBE_SUFFIXES["predictions"])
                    for task in self.tasks
                },
                "random_init": {task: probe_file(control, task, site, "unfiltered") for task in self.tasks}
                if control
                else {},
                "random_init_predictions": {
                    task: probe_file(control, task, site, "unfiltered", PROBE_SUFFIXES["predictions"])
                    for task in self.tasks
                }
                if control
                else {},
                "filtered_predictions": {
                    task: probe_file(model_id, task, site, "filtered", PROBE_SUFFIXES["predictions"])
                    for task in self.filter_pair
                },
                "patching": patching_file(model_id, site),
                "patching_pairs": patching_file(model_id, site, "_pairs"),
                "patching_inputs": patching_file(model_id, site, "_inputs", ".json"),
            }
        return {
            "datasets": {task: dataset(task) for task in self.tasks},
            "accuracy": patching_file(model_id, self.sites[0], "_accuracy"),
            "sites": sites,
        }

    def summary_input_list(self, model_id: str) -> list[str]:
        """summary_files as the flat list of the summary job's inputs."""

        def flat(value):
            if isinstance(value, dict):
                return [path for item in value.values() for path in flat(item)]
            return [value]

        return flat(self.summary_files(model_id))

    # -- targets ------------------------------------------------------------------------

    def figure_targets(self, number: int) -> list[str]:
        return [figure(m, f"fig{number}_{site}") for m in self.analysed for site in self.sites]

    def summary_targets(self) -> list[str]:
        return [summary(m) for m in self.analysed]

    def head_targets(self) -> list[str]:
        """The head figures of every model with head views; the knockout figure only where
        some layer's heads are knocked out (it would otherwise be blank)."""
        if not self.config["heads"]["enabled"]:
            return []
        return [
            figure(m, name)
            for m in self.with_stage("heads")
            for name in HEAD_FIGURES
            if name != "heads_knockout" or self.model(m).knockout_layers != ()
        ]

    # -- resources ----------------------------------------------------------------------

    def model_mem_mb(self, model_id: str) -> int:
        """Memory of making a model: drawing random weights holds its parameters
        (parameter_bound) in the dtype they are saved in (bfloat16 for a packaged
        architecture, as its config.json says; float32 assumed otherwise), times 1.5
        (measured for Llama-3.2-3B-shaped: 6.6 GB); every kind gets at least 4 GB, a trained
        one 8 GB."""
        row = self.model(model_id)
        if row.made_by == "trained":
            return 8000
        parameters = parameter_bound(row.spec)
        if row.made_by not in ("random_init", "shaped") or parameters is None:
            return 4000
        stored = 2 if packaged_architecture(row.spec) else 4
        return max(4000, int(parameters * stored * 1.5 / 1e6))

    def job_mem_mb(self, model_id: str, working_mb: int) -> int:
        """Host memory of a job that loads a model, plus `working_mb` for its own data. On
        a GPU the host maps the stored weights (2 bytes per parameter: the checkpoints are
        bfloat16) while it copies them to the device; on the CPU it holds them in the
        compute dtype (float32 for `auto`) and, while converting, the mapped file as well
        (measured for Llama-3.2-3B in float32: 19.5 GB at peak). 8 GB when the model's
        shape is not known before it is made."""
        parameters = parameter_bound(self.model(model_id).spec)
        if parameters is None:
            return max(8000, working_mb)
        if self.gpus:
            per_parameter = 2
        else:
            per_parameter = (2 if self.config["compute"]["dtype"] in ("bfloat16", "float16") else 4) + 2
        return working_mb + int(parameters * per_parameter / 1e6)

    def ridge_mb(self, model_id: str) -> int:
        """Host memory of the ridge readouts' training vectors in a probe job (minormech.
        ridge_probes): 2 poolings x prompts x layers x the summed widths of the sites, float32;
        0 when they are off, a model trains no unfiltered probes, or its shape is unknown
        (its job then asks for the 8 GB of an unknown shape)."""
        ridge = self.config["probe"]["ridge"]
        row = self.model(model_id)
        spec = row.spec
        if not ridge["enabled"] or "unfiltered" not in row.probe_kinds:
            return 0
        if not all(site in spec.site_widths for site in self.sites):
            return 0
        prompts = self.prompt_count("probe_train")
        if ridge["max_train_prompts"] is not None:
            prompts = min(prompts, ridge["max_train_prompts"])
        width = sum(spec.site_widths[site] for site in self.sites)
        return int(2 * prompts * len(row.layers) * width * 4 / 1e6)

    def probe_job_mb(self, model_id: str) -> int:
        """Host memory of a probe job: 8 GB, and the ridge readouts' vectors when it trains
        from shards (in stream mode it only puts the stream job's files in place)."""
        return 8000 + (self.ridge_mb(model_id) if self.trains_from_shards(model_id) else 0)

    def model_gpus(self, model_id: str) -> int:
        """Only training a model uses a GPU; the other kinds are made on CPU."""
        return self.gpus if self.model(model_id).made_by == "trained" else 0

    def model_regex(self) -> str:
        """The `model` wildcard's constraint: the ids of this plan."""
        return "|".join(sorted(self.models, key=len, reverse=True))
