"""The run plan (minormech.plan) on its own, without Snakemake: which models a config has,
what each is and which stages it gets, and that every path comes from one function."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from minormech import plan as paths
from minormech.config import ConfigError, load_schema, validate_config
from minormech.plan import HEAD_FIGURES, RunPlan

OVERLAYS = [
    "llama-3.2-3b.yaml",
    "llama-3.1-8b.yaml",
    "positive-control.yaml",
    "positive-control-scratch.yaml",
    "positive-control-gpu.yaml",
    "quick.yaml",
]


@pytest.fixture(scope="module")
def default(repo_root):
    return yaml.safe_load((repo_root / "config" / "config.yaml").read_text())


def merged(repo_root, default, overlay):
    config = copy.deepcopy(default)
    update_config(config, yaml.safe_load((repo_root / "config" / overlay).read_text()))
    validate_config(config, load_schema(repo_root / "config" / "config.schema.yaml"))
    return config


def test_default_plan_has_the_model_and_its_random_init_control(default):
    plan = RunPlan.from_config(default)
    assert plan.ids() == ["smollm2-135m", "smollm2-135m-random-init"]
    model, control = plan.model("smollm2-135m"), plan.model("smollm2-135m-random-init")
    assert (model.kind, model.made_by, model.prompts_of) == ("analysed", "gguf_package", "smollm2-135m")
    assert (control.kind, control.made_by, control.prompts_of, control.base) == (
        "random_init",
        "random_init",
        "smollm2-135m",
        "smollm2-135m",
    )
    assert model.probe_kinds == ("unfiltered", "filtered") and control.probe_kinds == ("unfiltered",)
    assert model.layers == tuple(range(30)) and model.patching_layers == (0, 14, 29)
    assert plan.analysed == ["smollm2-135m"]


def test_a_control_reads_its_base_models_prompts(default):
    plan = RunPlan.from_config(default)
    assert plan.prompts("smollm2-135m-random-init", "LR", "probe_train") == plan.prompts(
        "smollm2-135m", "LR", "probe_train"
    )
    assert plan.prompts("smollm2-135m", "MD", "attribution") == "results/smollm2-135m/prompts/MD/attribution.jsonl"


def test_positive_control_plan_has_a_tokenizer_only_model(repo_root, default):
    plan = RunPlan.from_config(merged(repo_root, default, "positive-control-scratch.yaml"))
    assert plan.ids() == ["tiny-icl", "smollm2-135m"]
    trained, tokenizer = plan.model("tiny-icl"), plan.model("smollm2-135m")
    assert (trained.kind, trained.prompts_of, trained.base) == ("trained", "smollm2-135m", "smollm2-135m")
    assert tokenizer.kind == "tokenizer" and tokenizer.stages == frozenset({"prompts"}) and tokenizer.probe_kinds == ()
    assert plan.random_init_of("tiny-icl") is None
    assert plan.model_inputs("tiny-icl") == {
        "datasets": ["results/datasets/LR.tsv", "results/datasets/MD.tsv"],
        "tokenizer": "results/smollm2-135m/model/manifest.json",
    }
    assert plan.model("tiny-icl").patching_layers == (0, 1, 2, 3)
    assert plan.model_gpus("tiny-icl") == plan.gpus == 0


def test_a_fine_tuned_control_is_read_against_its_architectures_random_init(repo_root, default):
    plan = RunPlan.from_config(merged(repo_root, default, "positive-control.yaml"))
    assert sorted(plan.ids()) == ["smollm2-135m", "smollm2-135m-random-init", "smollm2-icl"]
    assert plan.model("smollm2-135m").kind == "tokenizer" and plan.analysed == ["smollm2-icl"]
    control = plan.model("smollm2-135m-random-init")
    assert (control.kind, control.base, control.prompts_of) == ("random_init", "smollm2-135m", "smollm2-135m")
    assert plan.random_init_of("smollm2-icl") == "smollm2-135m-random-init"
    assert plan.summary_files("smollm2-icl")["sites"]["k"]["random_init"]["LR"] == paths.probe_file(
        "smollm2-135m-random-init", "LR", "k", "unfiltered"
    )


def test_paper_config_streams_its_probes_and_downloads_its_model(repo_root, default):
    plan = RunPlan.from_config(merged(repo_root, default, "llama-3.2-3b.yaml"))
    model = plan.model("llama-3.2-3b")
    assert model.probe_source == "stream" and plan.model("llama-3.2-3b-random-init").probe_source == "stream"
    assert plan.model_inputs("llama-3.2-3b") == {"download": "results/llama-3.2-3b/model/download.json"}
    assert plan.probe_inputs("llama-3.2-3b", "LR", "q", "unfiltered") == {"stream": "results/llama-3.2-3b/stream/LR"}
    assert plan.gpus == 1 and plan.model_gpus("llama-3.2-3b") == 0


def test_shard_mode_probe_inputs_name_every_chunk_and_the_xi_map(default):
    plan = RunPlan.from_config(default)
    inputs = plan.probe_inputs("smollm2-135m", "LR", "k", "filtered")
    assert inputs["train_shards"] == [
        "results/smollm2-135m/activations/LR/probe_train/chunk000.safetensors",
        "results/smollm2-135m/activations/LR/probe_train/chunk001.safetensors",
    ]
    assert inputs["xi"] == "results/smollm2-135m/xi/LR-MD.safetensors"
    assert "xi" not in plan.probe_inputs("smollm2-135m", "LR", "k", "unfiltered")
    with pytest.raises(ValueError, match="trains no filtered probes"):
        plan.probe_inputs("smollm2-135m-random-init", "LR", "k", "filtered")


def test_hdf5_shards_are_h5_files_read_by_the_same_probe_inputs(default):
    config = {**default, "activations": {**default["activations"], "format": "hdf5"}}
    plan = RunPlan.from_config(config)
    assert plan.shard_suffix == ".h5" and plan.hdf5 == {"chunk_kb": 1024, "compression": "none"}
    assert plan.probe_inputs("smollm2-135m", "MD", "v", "unfiltered")["test_shards"] == [
        "results/smollm2-135m/activations/MD/probe_test/chunk000.h5"
    ]


def test_summary_reads_the_random_init_tables_and_nothing_twice(default):
    plan = RunPlan.from_config(default)
    files = plan.summary_input_list("smollm2-135m")
    assert len(files) == len(set(files))
    assert "results/smollm2-135m-random-init/probes/MD/k/unfiltered.csv" in files
    no_control = RunPlan.from_config({**default, "controls": {**default["controls"], "random_init": False}})
    assert not any("random-init" in path for path in no_control.summary_input_list("smollm2-135m"))


def test_model_recipe_holds_only_what_makes_that_model(default):
    plan = RunPlan.from_config(default)
    assert plan.model_recipe("smollm2-135m-random-init") == {
        "made_by": "random_init",
        "base": "smollm2-135m",
        "seed": 0,
    }
    assert plan.model_recipe("smollm2-135m") == {"made_by": "gguf_package", "entry": {"id": "smollm2-135m"}}


def test_a_model_named_like_a_control_is_refused(default):
    config = {**default, "models": [{"id": "smollm2-135m"}, {"id": "smollm2-135m-random-init", "path": "/x"}]}
    with pytest.raises(ConfigError, match="is the name of a random-init control"):
        RunPlan.from_config(config)


def test_path_functions_without_arguments_are_the_rules_patterns():
    assert paths.probe_file() == "results/{model}/probes/{task}/{site}/{probe_kind}.csv"
    assert paths.shard() == "results/{model}/activations/{task}/{prompt_set}/chunk{chunk}.safetensors"
    assert paths.patching_file(table="_pairs") == "results/{model}/patching/{site}_pairs.csv"
    assert paths.figure("m", "fig1_k", "png") == "results/m/figures/fig1_k.png"
    assert paths.log("probe", "{model}", "{task}") == "logs/probe/{model}/{task}.log"


def test_targets_follow_the_config(default):
    plan = RunPlan.from_config(default)
    assert plan.figure_targets(3) == ["results/smollm2-135m/figures/fig3_k.pdf"]
    assert RunPlan.from_config({**default, "heads": {**default["heads"], "enabled": False}}).head_targets() == []


def test_the_knockout_figure_is_made_only_where_heads_are_knocked_out(default):
    """With heads.knockout off (the default) a knockout figure would be blank: none is made."""
    names = {Path(path).stem for path in RunPlan.from_config(default).head_targets()}
    assert names == {"heads_increase", "heads_attention", "heads_xi"}
    knocked = RunPlan.from_config({**default, "heads": {**default["heads"], "knockout": True}})
    assert {Path(path).stem for path in knocked.head_targets()} == set(HEAD_FIGURES)


def test_list_of_rules_is_the_same_for_every_shipped_config(repo_root):
    """Rules always exist; a config only selects targets."""
    lists = {}
    for overlay in [None, *OVERLAYS]:
        extra = ["--configfile", f"config/{overlay}"] if overlay else []
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--list-rules", *extra], cwd=repo_root, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-2000:]
        lists[overlay] = result.stdout.split()
    assert len({tuple(rules) for rules in lists.values()}) == 1, lists
    assert {"model", "probe", "stream_probes", "patching", "summary", "plot_fig5"} <= set(lists[None])


def test_a_shaped_model_is_analysed_without_a_random_init_copy(default):
    """A shape-exact model already has random weights: it runs the whole pipeline, and its
    weights are drawn by rule model from the architecture and the seed."""
    plan = RunPlan.from_config({**default, "models": [{"id": "llama-3.2-3b-shaped"}]})
    assert plan.ids() == ["llama-3.2-3b-shaped"]
    row = plan.model("llama-3.2-3b-shaped")
    assert (row.kind, row.made_by, row.layers) == ("analysed", "shaped", tuple(range(28)))
    assert plan.model_recipe("llama-3.2-3b-shaped") == {
        "made_by": "shaped",
        "entry": {"id": "llama-3.2-3b-shaped"},
        "seed": 0,
    }
