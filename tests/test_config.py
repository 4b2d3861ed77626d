import copy
import json

import pytest
import yaml
from snakemake.utils import update_config

from minormech.config import ConfigError, check_config_file, config_warnings, load_schema, validate_config


@pytest.fixture(scope="module")
def default(repo_root):
    return yaml.safe_load((repo_root / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def schema(repo_root):
    return load_schema(repo_root / "config" / "config.schema.yaml")


def _set(config, dotted, value):
    node = config
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value


def test_shipped_configs_are_valid(repo_root, default, schema):
    validate_config(default, schema)
    overlays = sorted(
        path for path in (repo_root / "config").glob("*.yaml") if path.name not in ("config.yaml", "config.schema.yaml")
    )
    assert {path.name for path in overlays} >= {
        "llama-3.2-3b.yaml",
        "llama-3.1-8b.yaml",
        "positive-control.yaml",
        "positive-control-scratch.yaml",
        "positive-control-gpu.yaml",
        "heads-full.yaml",
    }
    for path in overlays:
        merged = copy.deepcopy(default)
        update_config(merged, yaml.safe_load(path.read_text()))  # as snakemake --configfile merges
        validate_config(merged, schema)


def test_every_schema_key_has_a_description(schema):
    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{path}{key} has no description"
            walk(sub, f"{path}{key}.")
        if "items" in node and "properties" in node["items"]:
            walk(node["items"], path + "[].")

    walk(schema, "")


#: (kind, key, value, message): every kind of bad value a user may type (and a
#: few more), each with the one line the user sees after "config error: ". Every message
#: starts with the key and says what is allowed.
BAD = [
    (
        "unknown key",
        "bogus",
        1,
        r"^\(top level\): unknown key\(s\) \['bogus'\]; allowed keys: \['activations', 'attribution', ",
    ),
    (
        "unknown key",
        "probe.improved.lr_rate",
        1e-3,
        r"^probe\.improved: unknown key\(s\) \['lr_rate'\]; "
        r"allowed keys: \['batch_size', 'lr', 'max_epochs', 'patience', 'val_fraction'\]$",
    ),
    (
        "unknown site",
        "sites",
        ["k", "x"],
        r"^sites\[1\]: 'x' is not allowed; allowed values: "
        r"\['q', 'k', 'v', 'o', 'mlp', 'resid_pre', 'resid_mid', 'resid_post'\]$",
    ),
    (
        "layer out of range",
        "layers",
        [0, 30],
        r"^layers\[1\]: layer 30 is out of range for model 'smollm2-135m' \(allowed: 0..29\)$",
    ),
    ("layer out of range", "layers", [-1], r"^layers\[0\]: -1 is not allowed; allowed values: an integer >= 0$"),
    (
        "layer out of range",
        "patching.layers",
        [40],
        r"^patching\.layers\[0\]: layer 40 is out of range for every model \(allowed: 0..29\)$",
    ),
    ("h outside (0, 1)", "patching.h", 0, r"^patching\.h: 0 is not allowed; allowed values: a number > 0 and < 1$"),
    (
        "h outside (0, 1)",
        "patching.h",
        1.5,
        r"^patching\.h: 1\.5 is not allowed; allowed values: a number > 0 and < 1$",
    ),
    ("unknown task", "tasks", ["LR", "XOR"], r"^tasks\[1\]: unknown task 'XOR'; allowed values: \['LR', 'MD'\]$"),
    (
        "zero count",
        "prompts.probe_train",
        0,
        r"^prompts\.probe_train: 0 is not allowed; allowed values: an integer >= 1$",
    ),
    (
        "negative count",
        "prompts.patching",
        -3,
        r"^prompts\.patching: -3 is not allowed; allowed values: an integer >= 1$",
    ),
    (
        "negative count",
        "activations.batch_size",
        -8,
        r"^activations\.batch_size: -8 is not allowed; allowed values: an integer >= 1$",
    ),
    (
        "too many head prompts",
        "heads.prompts",
        65,
        r"^heads\.prompts: 65 is more than the 64 attribution prompts it reads; allowed values: 1\.\.64$",
    ),
    (
        "seed too large",
        "seed",
        2**70,
        r"^seed: 1180591620717411303424 is not allowed; allowed values: an integer >= 0 and <= 4294967295$",
    ),
    (
        "unknown shard format",
        "activations.format",
        "zarr",
        r"^activations\.format: 'zarr' is not allowed; allowed values: \['safetensors', 'hdf5'\]$",
    ),
    (
        "compression without HDF5",
        "activations.hdf5.compression",
        "gzip",
        r"^activations\.hdf5\.compression: gzip applies to HDF5 shards only, but activations\.format is "
        r"safetensors; allowed values: none, or activations\.format: hdf5$",
    ),
    (
        "too many chunks",
        "activations.chunks.probe_test",
        10**6,
        r"^activations\.chunks\.probe_test: 1000000 chunks for 40 prompts; allowed values: 1\.\.40$",
    ),
    (
        "max_prompt_tokens too small",
        "prompts.max_prompt_tokens",
        40,
        r"^prompts\.max_prompt_tokens: 40 may not hold one example: the longest LR example, "
        r"'\\nFeature 0: 22\\nFeature 1: 22\\nOutput: 968', has 40 characters .*; allowed values: an integer >= 41$",
    ),
    (
        "test split too large",
        "test_weights",
        529,
        r"^test_weights: 529 leaves no training weights; task LR has 529 weight vectors \(allowed values: 1\.\.528\)$",
    ),
    (
        "test split too large",
        "test_weights",
        1000,
        r"^test_weights: 1000 leaves no training weights; .*\(allowed values: 1\.\.528\)$",
    ),
    (
        "unknown attribution method",
        "attribution.method",
        "lime",
        r"^attribution\.method: 'lime' is not allowed; allowed values: "
        r"\['saliency', 'input_x_gradient', 'smoothgrad', 'integrated_gradients', 'expected_gradients', 'idgi'\]$",
    ),
    (
        "unknown model id",
        "models",
        [{"id": "gpt-9"}],
        r"^models\[0\]\.id: unknown model id 'gpt-9'; "
        r"allowed values: \['llama-3.1-8b', 'llama-3.1-8b-shaped', 'llama-3.2-1b-shaped', 'llama-3.2-3b', "
        r"'llama-3.2-3b-shaped', 'smollm2-135m'\], "
        r"or any id with 'hub: <name>', 'path: <dir>' or 'architecture: <name>'$",
    ),
    (
        "duplicate model ids",
        "models",
        [{"id": "smollm2-135m"}, {"id": "smollm2-135m"}],
        r"^models\[1\]\.id: duplicate model id 'smollm2-135m'; .*allowed values: an id not used by another entry$",
    ),
    (
        "model path missing",
        "models",
        [{"id": "mine", "path": "/nonexistent/model"}],
        r"^models\[0\]\.path: /nonexistent/model does not exist or is not a directory; "
        r"allowed values: a local directory with a transformers model",
    ),
    (
        "wrong type",
        "prompts.max_prompt_tokens",
        "600",
        r"^prompts\.max_prompt_tokens: '600' is not allowed; allowed values: an integer >= 1$",
    ),
    (
        "wrong type",
        "probe.keep_in_memory",
        "yes",
        r"^probe\.keep_in_memory: 'yes' is not allowed; allowed values: true or false$",
    ),
    (
        "wrong type",
        "sites",
        "k",
        r"^sites: 'k' is not allowed; allowed values: "
        r"a non-empty list of values from \['q', 'k', 'v', 'o', 'mlp', 'resid_pre', 'resid_mid', 'resid_post'\]$",
    ),
    (
        "wrong type",
        "layers",
        "most",
        r"^layers: 'most' is not allowed; allowed values: 'all' or a non-empty list of integers >= 0$",
    ),
    ("wrong type", "compute.threads", 2.5, r"^compute\.threads: 2\.5 is not allowed; allowed values: an integer >= 1$"),
    (
        "wrong type",
        "prompts",
        5,
        r"^prompts: 5 is not allowed; allowed values: a mapping with keys \['attribution', 'max_prompt_tokens', ",
    ),
    (
        "unknown value",
        "probe.regime",
        "fast",
        r"^probe\.regime: 'fast' is not allowed; allowed values: \['paper', 'improved'\]$",
    ),
    (
        "unknown value",
        "compute.device",
        "tpu",
        r"^compute\.device: 'tpu' is not allowed; allowed values: "
        r"one of \['cpu', 'cuda', 'auto'\] or a string matching \^cuda:\[0-9\]\+\$$",
    ),
    (
        "out of range",
        "probe.improved.val_fraction",
        1.0,
        r"^probe\.improved\.val_fraction: 1\.0 is not allowed; allowed values: a number > 0 and < 1$",
    ),
    (
        "duplicate",
        "layers",
        [3, 3],
        r"^layers: a layer is listed twice in \[3, 3\]; allowed values: distinct layer indices$",
    ),
    (
        "missing key",
        "compute",
        {"device": "cpu", "dtype": "auto"},
        r"^compute: missing key\(s\) \['threads'\]; required keys: \['device', 'dtype', 'threads'\]$",
    ),
    # Numbers that are not numbers: every bound is false for NaN, so the schema alone let them through.
    (
        "not a finite number",
        "patching.h",
        float("nan"),
        r"^patching\.h: nan is not allowed; allowed values: a number > 0",
    ),
    ("not a finite number", "uncertainty.level", float("nan"), r"^uncertainty\.level: nan is not allowed; allowed"),
    ("not a finite number", "probe.improved.lr", float("nan"), r"^probe\.improved\.lr: nan is not allowed; allowed"),
    ("not a finite number", "probe.improved.lr", float("inf"), r"^probe\.improved\.lr: inf is not allowed; allowed"),
    # A float where an integer is meant, even an integral one: refused before any job casts it.
    (
        "float for an integer",
        "probe.d_proj",
        512.0,
        r"^probe\.d_proj: 512\.0 is not allowed; allowed values: an integer",
    ),
    (
        "float for an integer",
        "probe.d_proj",
        512.5,
        r"^probe\.d_proj: 512\.5 is not allowed; allowed values: an integer",
    ),
    ("float for an integer", "seed", 1.0, r"^seed: 1\.0 is not allowed; allowed values: an integer"),
    ("float for an integer", "prompts.probe_train", 128.0, r"^prompts\.probe_train: 128\.0 is not allowed; allowed"),
    (
        "float for an integer",
        "compute.threads",
        2.0,
        r"^compute\.threads: 2\.0 is not allowed; allowed values: an integer",
    ),
    (
        "duplicate",
        "patching.layers",
        [14, 14],
        r"^patching\.layers: a layer is listed twice in \[14, 14\]; allowed values: distinct layer indices$",
    ),
    (
        "too many top heads",
        "heads.top",
        271,
        r"^heads\.top: 271 is more than the 30 x 9 \(layer, query head\) pairs of model 'smollm2-135m'; "
        r"allowed values: 1\.\.270$",
    ),
    (
        "layer out of range",
        "heads.knockout_layers",
        [3, 30],
        r"^heads\.knockout_layers\[1\]: layer 30 is out of range for every model \(allowed: 0\.\.29\)$",
    ),
]


def test_every_kind_of_the_issue_is_covered():
    kinds = {kind for kind, *_ in BAD}
    assert {
        "unknown key",
        "unknown site",
        "layer out of range",
        "h outside (0, 1)",
        "unknown task",
        "zero count",
        "negative count",
        "max_prompt_tokens too small",
        "test split too large",
        "unknown attribution method",
        "unknown model id",
        "duplicate model ids",
        "wrong type",
    } <= kinds


def test_path_model_without_config_json(default, schema, tmp_path):
    config = copy.deepcopy(default)
    config["models"] = [{"id": "mine", "path": str(tmp_path)}]
    with pytest.raises(ConfigError, match=r"^models\[0\]\.path: .* has no config\.json; allowed values: "):
        validate_config(config, schema)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(
        ConfigError,
        match=r"^models\[0\]\.path: .* has a config\.json without "
        r"\['num_hidden_layers', 'hidden_size', 'num_attention_heads'\]",
    ):
        validate_config(config, schema)


@pytest.mark.parametrize("architecture", ["GPTNeoXForCausalLM", "OPTForCausalLM"])
def test_path_model_of_another_architecture_is_refused(default, schema, tmp_path, architecture):
    """A local model whose module layout is not the site table's is refused before planning."""
    config = copy.deepcopy(default)
    config["models"] = [{"id": "mine", "path": str(tmp_path)}]
    facts = {"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "architectures": [architecture]}
    (tmp_path / "config.json").write_text(json.dumps(facts))
    with pytest.raises(ConfigError) as error:
        validate_config(config, schema)
    assert str(error.value).startswith(
        f"models[0].path: {tmp_path} holds a {architecture} model; supported architectures: "
        "['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM']"
    )


def test_smallest_budget_that_holds_every_example_is_accepted(default, schema):
    config = copy.deepcopy(default)
    config["prompts"]["max_prompt_tokens"] = 41
    validate_config(config, schema)


@pytest.mark.parametrize("kind,key,value,message", BAD, ids=[f"{b[0]}: {b[1]}={str(b[2])[:20]}" for b in BAD])
def test_bad_values_name_their_key(default, schema, kind, key, value, message):
    config = copy.deepcopy(default)
    _set(config, key, value)
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(config, schema)
    text = str(error.value)
    assert "\n" not in text and (
        "allowed" in text or "required keys" in text
    )  # one line naming what is allowed; the regex anchors the key


def test_more_threads_than_cores_is_a_warning_not_an_error(default, schema):
    config = copy.deepcopy(default)
    config["compute"]["threads"] = 64
    validate_config(config, schema)
    assert config_warnings(config, cores=2) == [
        "config warning: compute.threads: 64 is more than the 2 cores of this machine"
    ]
    assert config_warnings(default, cores=2) == []


def test_config_files_are_read_as_written_repeated_keys_and_yte_refused(tmp_path, repo_root):
    """Every shipped config passes; a key repeated at any depth (PyYAML would keep the last
    value silently) and a file that turns on YTE are refused with one line naming the file."""
    for shipped in sorted((repo_root / "config").glob("*.yaml")):
        check_config_file(shipped)
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text("patching:\n  layers: [0]\n  h: 0.5\n  layers: [29]\n")
    with pytest.raises(ConfigError, match=r"repeated\.yaml: key 'layers' appears twice \(line 4\)"):
        check_config_file(repeated)
    yte = tmp_path / "yte.yaml"
    yte.write_text("__use_yte__: true\nseed: ?1 + 1\n")
    with pytest.raises(ConfigError, match=r"yte\.yaml: __use_yte__: true makes Snakemake evaluate"):
        check_config_file(yte)
