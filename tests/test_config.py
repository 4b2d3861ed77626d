import copy

import pytest
import yaml

from minormech.config import ConfigError, load_schema, validate_config


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
    for name in ("llama-3.2-3b.yaml", "llama-3.1-8b.yaml"):
        merged = copy.deepcopy(default)
        merged.update(yaml.safe_load((repo_root / "config" / name).read_text()))
        validate_config(merged, schema)


def test_every_schema_key_has_a_description(schema):
    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{path}{key} has no description"
            walk(sub, f"{path}{key}.")
        if "items" in node and "properties" in node["items"]:
            walk(node["items"], path + "[].")

    walk(schema, "")


BAD = [
    ("sites", ["k", "x"], r"^sites\[1\]: 'x' is not allowed; allowed values: \['q', 'k', 'v', 'o', 'mlp'\]"),
    ("layers", [0, 30], r"^layers\[1\]: layer 30 is out of range for model 'smollm2-135m' \(allowed: 0..29\)"),
    ("models", [{"id": "gpt-9"}], r"^models\[0\]\.id: unknown model id 'gpt-9'"),
    ("models", [{"id": "smollm2-135m"}, {"id": "smollm2-135m"}], r"^models\[1\]\.id: duplicate model id"),
    ("tasks", ["LR", "XOR"], r"^tasks\[1\]: unknown task 'XOR'"),
    ("bogus", 1, r"unknown key\(s\) \['bogus'\]"),
    ("probe.regime", "fast", r"^probe\.regime: 'fast' is not allowed"),
    ("prompts.probe_train", 0, r"^prompts\.probe_train: 0 is less than the minimum of 1"),
    ("prompts.max_prompt_tokens", "600", r"^prompts\.max_prompt_tokens: '600' is not of type 'integer'"),
    ("test_weights", 529, r"^test_weights: 529 leaves no training weights"),
    ("probe.improved.val_fraction", 1.0, r"^probe\.improved\.val_fraction: 1\.0 is greater than or equal"),
    ("compute.device", "tpu", r"^compute\.device: 'tpu' does not match"),
    ("activations.chunks.probe_test", 10**6, r"^activations\.chunks\.probe_test: 1000000 chunks for 80 prompts"),
    ("layers", "most", r"^layers: 'most' is not valid"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[b[0] + "=" + str(b[1])[:20] for b in BAD])
def test_bad_values_name_their_key(default, schema, key, value, message):
    config = copy.deepcopy(default)
    _set(config, key, value)
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(config, schema)
    assert "\n" not in str(error.value)
