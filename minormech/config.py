"""Config validation: the JSON schema (config/config.schema.yaml) plus the checks a schema
cannot express (layers against each model's depth, duplicate model ids, ...).

Every problem becomes one ConfigError whose message starts with the offending key and
says what is allowed, so a typo stops the workflow before any job runs. Nothing here
loads a model or a tokenizer: validation runs whenever Snakemake parses the workflow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import yaml

from minormech.models import ARCHITECTURE_KEYS, KNOWN_MODELS, ModelSpec, hub_config, resolve_model_spec
from minormech.prompts import format_example
from minormech.sites import CONFIG_KEYS, architecture_problem
from minormech.tasks import TASKS, Task, get_task, value_grid


class ConfigError(ValueError):
    """A bad config value; str(error) is one line naming the key."""


def _is_integer(_checker, value) -> bool:
    """An integer key takes an int: 512.0 or True is refused (not silently cast later)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(_checker, value) -> bool:
    """A number key takes a finite int or float: NaN and infinity are refused, since every
    bound (minimum, exclusiveMaximum) is false for NaN and so would let it through."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: The schema's validator with strict integers and finite numbers.
STRICT_VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_number}
    ),
)


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _key_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(schema: dict, plural: bool = False) -> str:
    """What a schema allows, in words: 'an integer >= 1', "'all' or a non-empty list of integers >= 0"."""
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return f"{'values from' if plural else 'one of'} {schema['enum']}"
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(_describe(sub, plural) for sub in schema[key])
    kind = schema.get("type", "string" if "pattern" in schema else None)
    if isinstance(kind, list):
        return " or ".join(_describe({**schema, "type": k}, plural) for k in kind)
    if kind == "array":
        items = _describe(schema["items"], plural=True) if "items" in schema else "values"
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if high is not None and low == high:
            return f"a list of {low} {items}"
        return f"a {'non-empty ' if low >= 1 else ''}list of {items}"
    if kind in ("integer", "number"):
        noun = {"integer": ("an integer", "integers"), "number": ("a number", "numbers")}[kind][plural]
        bounds = [
            f"{op} {schema[key]}"
            for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
            if key in schema
        ]
        return " ".join([noun, " and ".join(bounds)]).strip()
    if kind == "string":
        noun = "strings" if plural else "a string"
        return f"{noun} matching {schema['pattern']}" if "pattern" in schema else noun
    if kind == "boolean":
        return "true or false"
    if kind == "null":
        return "null"
    if kind == "object":
        return f"{'mappings' if plural else 'a mapping'} with keys {sorted(schema.get('properties', {}))}"
    return "see config/config.schema.yaml"


def _branch_for(error: jsonschema.ValidationError) -> jsonschema.ValidationError | None:
    """For a oneOf/anyOf failure on a list or mapping where exactly one branch takes that
    kind of value ('all' or a list of layers), the error inside that branch."""
    kind = {list: "array", dict: "object"}.get(type(error.instance))
    branches = [i for i, sub in enumerate(error.validator_value) if sub.get("type") == kind]
    if kind is None or len(branches) != 1:
        return None
    inside = [e for e in error.context if e.relative_schema_path[0] == branches[0]]
    return min(inside, key=lambda e: -len(e.absolute_path)) if inside else None


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator in ("oneOf", "anyOf"):
        error = _branch_for(error) or error
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{key}: unknown key(s) {extra}; allowed keys: {allowed}"
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        return f"{key}: missing key(s) {missing}; required keys: {error.validator_value}"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    return f"{key}: {error.instance!r} is not allowed; allowed values: {_describe(error.schema)}"


def _model_config_problem(config_file: Path) -> str | None:
    """Why a local model's config.json cannot give the layer count and site widths, or None."""
    if not config_file.is_file():
        return "has no config.json"
    try:
        cfg = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        return f"has a config.json that is not readable JSON ({error})"
    if not isinstance(cfg, dict):
        return "has a config.json that is not a mapping"
    problem = architecture_problem(cfg)
    if problem:
        return problem
    missing = [key for key in CONFIG_KEYS if key not in cfg]
    if missing:
        return f"has a config.json without {missing} (not a Llama-style causal LM)"
    return None


def _check_listed_layers(config: dict[str, Any], key: str, listed) -> None:
    """A layer list such as patching.layers: 'all', or distinct layers that are analysed and
    that some model has. Each model uses the listed layers it has (a shallow positive control
    patches the first ones); a layer no model has, or a model left with none, is an error."""
    if listed == "all":
        return
    if len(set(listed)) != len(listed):
        raise ConfigError(f"{key}: a layer is listed twice in {listed}; allowed values: distinct layer indices")
    for j, layer in enumerate(listed):
        if config["layers"] != "all" and layer not in config["layers"]:
            raise ConfigError(
                f"{key}[{j}]: layer {layer} is not among the analysed layers; allowed values: {config['layers']}"
            )
    depths = {spec.id: spec.num_layers for spec in model_specs(config) if spec.num_layers is not None}
    if not depths:
        return
    deepest = max(depths.values())
    for j, layer in enumerate(listed):
        if layer >= deepest:
            raise ConfigError(f"{key}[{j}]: layer {layer} is out of range for every model (allowed: 0..{deepest - 1})")
    for model_id, depth in depths.items():
        if not any(layer < depth for layer in listed):
            raise ConfigError(f"{key}: none of {listed} is a layer of model {model_id!r} (allowed: 0..{depth - 1})")


def _check_weight_source(entry: dict[str, Any], i: int) -> None:
    """A model's weights come from one place, and only a shape-exact model names a tokenizer."""
    sources = [key for key in ("hub", "path", "architecture", "train") if key in entry]
    if len(sources) > 1:
        raise ConfigError(
            f"models[{i}]: {sources[0]!r} and {sources[1]!r} exclude each other; "
            "allowed: one of hub, path, architecture, train"
        )
    if "tokenizer" in entry and "architecture" not in entry:
        raise ConfigError(
            f"models[{i}].tokenizer: only a shape-exact model (architecture: ...) takes a tokenizer by name; "
            "allowed: remove it, or add architecture"
        )
    known = KNOWN_MODELS.get(entry["id"])
    from_hub = "hub" in entry or (not sources and known is not None and known.source == "hub")
    if "revision" in entry and not from_hub:
        raise ConfigError(
            f"models[{i}].revision: only a model from the hub takes a revision (the commit to download); "
            "allowed: remove it, or add hub"
        )


def _check_hub_model(config: dict[str, Any], i: int) -> None:
    """A hub model whose config.json is already in the model cache is checked as a local one:
    an architecture the site table does not fit is refused before anything is downloaded."""
    entry = config["models"][i]
    cached = hub_config(entry["hub"], entry.get("revision"), config["model_cache"])
    problem = architecture_problem(cached) if cached is not None else None
    if problem:
        raise ConfigError(
            f"models[{i}].hub: {entry['hub']} (config.json in the model cache) {problem}; "
            "allowed values: a hub model of a supported architecture"
        )


def _check_trained_model(config: dict[str, Any], i: int) -> None:
    """What the schema cannot say about a `train:` entry: a shape a Llama accepts, and a
    tokenizer from a model that rule `model` makes (a trained model has no tokenizer of its
    own, and its id's folder belongs to the trained weights)."""
    entry, key = config["models"][i], f"models[{i}].train"
    train = entry["train"]
    pretrained = train.get("init", "scratch") == "pretrained"
    for name in ARCHITECTURE_KEYS:
        if pretrained and name in train:
            raise ConfigError(
                f"{key}.{name}: not allowed with init: pretrained (the architecture is that of "
                f"tokenizer_of, {train['tokenizer_of']!r}); allowed: remove it, or init: scratch"
            )
        if not pretrained and name not in train:
            raise ConfigError(f"{key}.{name}: required with init: scratch (the shape of the model to train)")
    if not pretrained:
        _check_trained_shape(train, key)
    trained = {other["id"] for other in config["models"] if "train" in other}
    allowed = sorted((set(KNOWN_MODELS) | {other["id"] for other in config["models"]}) - trained)
    if train["tokenizer_of"] not in allowed:
        raise ConfigError(
            f"{key}.tokenizer_of: {train['tokenizer_of']!r} is not a known or configured untrained model; "
            f"allowed values: {allowed}"
        )


def _check_trained_shape(train: dict[str, Any], key: str) -> None:
    """A shape a Llama accepts: heads of even width (rotary embeddings), grouped queries."""
    if train["hidden_size"] % (2 * train["heads"]):
        raise ConfigError(
            f"{key}.hidden_size: {train['hidden_size']} does not split into {train['heads']} heads of even width "
            f"(rotary embeddings); allowed values: a multiple of {2 * train['heads']}"
        )
    if train["heads"] % train["kv_heads"]:
        raise ConfigError(
            f"{key}.kv_heads: {train['kv_heads']} does not divide heads={train['heads']}; "
            f"allowed values: a divisor of {train['heads']}"
        )


def longest_example(task: Task) -> str:
    """The longest example text Algorithm 1 can draw for a task: the widest input value in
    every feature and the widest output over every (x, w) in the value grid."""
    grid = value_grid(task)
    outputs = np.concatenate([task.output(grid, w) for w in grid])
    widest_x = max((int(v) for v in (task.value_low, task.value_high)), key=lambda v: len(str(v)))
    widest_y = max((int(outputs.min()), int(outputs.max())), key=lambda v: len(str(v)))
    return format_example([widest_x] * task.dimension, widest_y)


def min_prompt_tokens(task: Task) -> int:
    """A token budget that holds any one example of the task whatever the tokenizer: no
    tokenizer needs more tokens than the text has bytes, plus one (a SentencePiece word
    marker at the start). Conservative: SmolLM2 needs 23 tokens for the longest LR
    example, this bound is 41."""
    return len(longest_example(task).encode()) + 1


def model_specs(config: dict[str, Any]) -> list[ModelSpec]:
    """The spec of every `models:` entry, hub models' facts read from the configured model cache."""
    return [resolve_model_spec(entry, config["model_cache"]) for entry in config["models"]]


def prompt_count(config: dict[str, Any], prompt_set: str) -> int:
    """Prompts in one prompt set of one task: the prompts rule makes this many, and the
    scripts that read a prompt file check it against this count."""
    if prompt_set == "probe_test":
        return config["test_weights"] * config["prompts"]["probe_test_per_weight"]
    if prompt_set == "patching_ref":
        return config["prompts"]["patching"]
    return config["prompts"][prompt_set]


def layers_for(config: dict[str, Any], spec: ModelSpec) -> list[int] | None:
    """The layer indices a run uses for one model ('all' = every layer); None while 'all'
    waits for a layer count that is not known yet: a hub model's, before rule
    download_model has put its config.json in the model cache."""
    if config["layers"] != "all":
        return list(config["layers"])
    return None if spec.num_layers is None else list(range(spec.num_layers))


def check_layer_settings(config: dict[str, Any]) -> None:
    """The settings that depend on each model's layer and head counts: the patched and
    knocked-out layers, and the head views' top pairs. Checked for the models whose counts
    are known; a hub model with ``layers: all`` whose config.json is not yet in the model
    cache is checked again once rule download_model has fetched it (RunPlan.learn_depth)."""
    _check_listed_layers(config, "patching.layers", config["patching"]["layers"])
    _check_listed_layers(config, "heads.knockout_layers", config["heads"]["knockout_layers"])
    for spec in model_specs(config) if config["heads"]["enabled"] else ():
        if spec.num_layers is None or spec.query_heads is None:
            continue
        n_layers = spec.num_layers if config["layers"] == "all" else len(config["layers"])
        if config["heads"]["top"] > n_layers * spec.query_heads:
            raise ConfigError(
                f"heads.top: {config['heads']['top']} is more than the {n_layers} x {spec.query_heads} "
                f"(layer, query head) pairs of model {spec.id!r}; allowed values: 1..{n_layers * spec.query_heads}"
            )


def config_warnings(config: dict[str, Any], cores: int | None) -> list[str]:
    """What a valid config may get wrong on this machine, one line each: more threads per
    job than it has cores slows every model job (a SLURM node may have more; a warning)."""
    threads = config["compute"]["threads"]
    if cores is not None and threads > cores:
        return [f"config warning: compute.threads: {threads} is more than the {cores} cores of this machine"]
    return []


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last
    value silently, so a repeated key hides an earlier setting)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def check_config_file(path: str | Path) -> None:
    """ConfigError naming `path` for a config file this workflow refuses: a repeated key, or
    ``__use_yte__: true``, with which Snakemake evaluates the file's ``?...`` expressions as
    Python code when it reads it. (Snakemake reads a --configfile before the workflow's code
    runs, so the expressions have run by then; the refusal keeps any such config from
    planning a job. README, "Safety".)"""
    try:
        raw = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}; allowed values: each key once per mapping") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not a readable YAML or JSON file ({str(error).splitlines()[0]})") from None
    if isinstance(raw, dict) and raw.get("__use_yte__"):
        raise ConfigError(
            f"{path}: __use_yte__: true makes Snakemake evaluate the file's expressions as Python code; "
            "this workflow refuses such configs: write plain values"
        )


def validate_config(config: dict[str, Any], schema: dict) -> None:
    """Raise ConfigError for the first problem found, schema problems first."""
    validator = STRICT_VALIDATOR(schema)
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path)))
    )
    if errors:
        raise ConfigError(_schema_message(errors[0]))

    for i, name in enumerate(config["tasks"]):
        if name not in TASKS:
            raise ConfigError(f"tasks[{i}]: unknown task {name!r}; allowed values: {sorted(TASKS)}")
        n_weights = len(value_grid(get_task(name)))
        if config["test_weights"] >= n_weights:
            raise ConfigError(
                f"test_weights: {config['test_weights']} leaves no training weights; "
                f"task {name} has {n_weights} weight vectors (allowed values: 1..{n_weights - 1})"
            )
    if len(set(config["tasks"])) != len(config["tasks"]):
        raise ConfigError(f"tasks: a task is listed twice in {config['tasks']}; allowed values: distinct task names")

    budget = config["prompts"]["max_prompt_tokens"]
    needed = {name: min_prompt_tokens(get_task(name)) for name in config["tasks"]}
    widest = max(needed, key=needed.get)
    if budget < needed[widest]:
        raise ConfigError(
            f"prompts.max_prompt_tokens: {budget} may not hold one example: the longest {widest} example, "
            f"{longest_example(get_task(widest))!r}, has {needed[widest] - 1} characters and a tokenizer may need "
            f"a token for each (plus one); allowed values: an integer >= {needed[widest]}"
        )

    for i, pair in enumerate(config["task_pairs"]):
        for j, name in enumerate(pair):
            if name not in config["tasks"]:
                raise ConfigError(f"task_pairs[{i}][{j}]: {name!r} is not in tasks; allowed values: {config['tasks']}")
        if pair[0] == pair[1]:
            raise ConfigError(
                f"task_pairs[{i}]: a pair needs two different tasks, got {pair}; "
                f"allowed values: two different names from {config['tasks']}"
            )

    if config["layers"] != "all" and len(set(config["layers"])) != len(config["layers"]):
        raise ConfigError(
            f"layers: a layer is listed twice in {config['layers']}; allowed values: distinct layer indices"
        )
    if len(set(config["sites"])) != len(config["sites"]):
        raise ConfigError(f"sites: a site is listed twice in {config['sites']}; allowed values: distinct sites")

    ids = [entry["id"] for entry in config["models"]]
    for i, model_id in enumerate(ids):
        if ids.index(model_id) != i:
            raise ConfigError(
                f"models[{i}].id: duplicate model id {model_id!r}; every id names one output folder, "
                "so allowed values: an id not used by another entry"
            )
        _check_weight_source(config["models"][i], i)
        if "train" in config["models"][i]:
            _check_trained_model(config, i)
        path = config["models"][i].get("path")
        if path is not None:
            if not Path(path).is_dir():
                raise ConfigError(
                    f"models[{i}].path: {path} does not exist or is not a directory; "
                    "allowed values: a local directory with a transformers model "
                    "(config.json, *.safetensors weights, tokenizer files)"
                )
            problem = _model_config_problem(Path(path) / "config.json")
            if problem:
                raise ConfigError(
                    f"models[{i}].path: {path} {problem}; "
                    "allowed values: a local directory with a transformers model "
                    "(config.json, *.safetensors weights, tokenizer files)"
                )
        if "hub" in config["models"][i]:
            _check_hub_model(config, i)
        try:
            spec = resolve_model_spec(config["models"][i], config["model_cache"])
        except KeyError as error:
            raise ConfigError(f"models[{i}].id: {error.args[0].removeprefix('models: ')}") from None
        if config["layers"] != "all" and spec.num_layers is not None:
            for j, layer in enumerate(config["layers"]):
                if not 0 <= layer < spec.num_layers:
                    raise ConfigError(
                        f"layers[{j}]: layer {layer} is out of range for model {model_id!r} "
                        f"(allowed: 0..{spec.num_layers - 1})"
                    )
    check_layer_settings(config)
    storage = config["activations"]
    if storage["format"] != "hdf5" and storage["hdf5"]["compression"] != "none":
        raise ConfigError(
            f"activations.hdf5.compression: {storage['hdf5']['compression']} applies to HDF5 shards only, "
            f"but activations.format is {storage['format']}; allowed values: none, or activations.format: hdf5"
        )
    chunks = config["activations"]["chunks"]
    sizes = {prompt_set: prompt_count(config, prompt_set) for prompt_set in chunks}
    for prompt_set, n_chunks in chunks.items():
        if n_chunks > sizes[prompt_set]:
            raise ConfigError(
                f"activations.chunks.{prompt_set}: {n_chunks} chunks for {sizes[prompt_set]} prompts; "
                f"allowed values: 1..{sizes[prompt_set]}"
            )
    if config["heads"]["prompts"] > config["prompts"]["attribution"]:
        raise ConfigError(
            f"heads.prompts: {config['heads']['prompts']} is more than the "
            f"{config['prompts']['attribution']} attribution prompts it reads; "
            f"allowed values: 1..{config['prompts']['attribution']}"
        )
