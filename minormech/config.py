"""Config validation: the JSON schema (config/config.schema.yaml) plus the checks a schema
cannot express (layers against each model's depth, duplicate model ids, ...).

Every problem becomes one ConfigError whose message starts with the offending key and
says what is allowed, so a typo stops the workflow before any job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from minormech.models import ModelSpec, resolve_model_spec
from minormech.tasks import TASKS, get_task, value_grid


class ConfigError(ValueError):
    """A bad config value; str(error) is one line naming the key."""


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _key_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _schema_message(error: jsonschema.ValidationError) -> str:
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{key}: unknown key(s) {extra}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    if error.validator in ("oneOf", "anyOf"):
        hints = "; ".join(sorted({sub.message for sub in error.context}))
        return f"{key}: {error.instance!r} is not valid ({hints})"
    return f"{key}: {error.message}"


def model_specs(config: dict[str, Any]) -> list[ModelSpec]:
    return [resolve_model_spec(entry) for entry in config["models"]]


def layers_for(config: dict[str, Any], spec: ModelSpec) -> list[int]:
    """The layer indices a run uses for one model ('all' = every layer)."""
    if config["layers"] == "all":
        if spec.num_layers is None:
            raise ConfigError(f"layers: 'all' needs the layer count of model {spec.id!r}; list the layers explicitly")
        return list(range(spec.num_layers))
    return list(config["layers"])


def validate_config(config: dict[str, Any], schema: dict) -> None:
    """Raise ConfigError for the first problem found, schema problems first."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_schema_message(errors[0]))

    for i, name in enumerate(config["tasks"]):
        if name not in TASKS:
            raise ConfigError(f"tasks[{i}]: unknown task {name!r}; known tasks: {sorted(TASKS)}")
        n_weights = len(value_grid(get_task(name)))
        if config["test_weights"] >= n_weights:
            raise ConfigError(f"test_weights: {config['test_weights']} leaves no training weights; task {name} has {n_weights} weight vectors")

    for i, pair in enumerate(config["task_pairs"]):
        for j, name in enumerate(pair):
            if name not in config["tasks"]:
                raise ConfigError(f"task_pairs[{i}][{j}]: {name!r} is not in tasks {config['tasks']}")
        if pair[0] == pair[1]:
            raise ConfigError(f"task_pairs[{i}]: a pair needs two different tasks, got {pair}")

    ids = [entry["id"] for entry in config["models"]]
    for i, model_id in enumerate(ids):
        if ids.index(model_id) != i:
            raise ConfigError(f"models[{i}].id: duplicate model id {model_id!r}; every id names one output folder")
        try:
            spec = resolve_model_spec(config["models"][i])
        except KeyError as error:
            raise ConfigError(f"models[{i}].id: {error.args[0].removeprefix('models: ')}") from None
        if config["layers"] != "all" and spec.num_layers is not None:
            for j, layer in enumerate(config["layers"]):
                if not 0 <= layer < spec.num_layers:
                    raise ConfigError(f"layers[{j}]: layer {layer} is out of range for model {model_id!r} (allowed: 0..{spec.num_layers - 1})")
    patched = config["patching"]["layers"]
    if patched != "all":
        for j, layer in enumerate(patched):
            if config["layers"] != "all" and layer not in config["layers"]:
                raise ConfigError(f"patching.layers[{j}]: layer {layer} is not among the analysed layers {config['layers']}")
            for spec in model_specs(config):
                if spec.num_layers is not None and layer >= spec.num_layers:
                    raise ConfigError(f"patching.layers[{j}]: layer {layer} is out of range for model {spec.id!r} (allowed: 0..{spec.num_layers - 1})")
    if config["layers"] != "all" and len(set(config["layers"])) != len(config["layers"]):
        raise ConfigError("layers: a layer is listed twice")
    if len(set(config["sites"])) != len(config["sites"]):
        raise ConfigError("sites: a site is listed twice")

    chunks = config["activations"]["chunks"]
    sizes = {
        "probe_train": config["prompts"]["probe_train"],
        "probe_test": config["test_weights"] * config["prompts"]["probe_test_per_weight"],
    }
    for prompt_set, n_chunks in chunks.items():
        if n_chunks > sizes[prompt_set]:
            raise ConfigError(f"activations.chunks.{prompt_set}: {n_chunks} chunks for {sizes[prompt_set]} prompts; use at most {sizes[prompt_set]}")

