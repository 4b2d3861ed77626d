"""Model registry and loaders: the embedded GGUF model, a local path, and a hub name
resolved offline from an HF_HOME cache (the cluster's situation), all on real weights."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from minormech.models import (
    KNOWN_MODELS,
    architecture_config,
    architecture_parameters,
    architectures,
    load_model,
    prepare_model,
    resolve_model_spec,
    shaped_spec,
)


def test_registry_facts_match_the_real_model(smollm2_manifest, smollm2):
    model, _ = smollm2
    spec = KNOWN_MODELS["smollm2-135m"]
    assert smollm2_manifest.num_layers == spec.num_layers == len(model.model.layers)
    assert smollm2_manifest.site_widths == spec.site_widths
    attn = model.model.layers[0].self_attn
    assert spec.site_widths["k"] == attn.k_proj.out_features
    assert not any(p.requires_grad for p in model.parameters())


def test_dequantized_model_predicts_like_the_gguf_original(smollm2_manifest, smollm2):
    """The converted safetensors directory is the same model as the GGUF file."""
    from transformers import AutoModelForCausalLM

    from minormech.models import gguf_package_file

    model, tokenizer = smollm2
    gguf = gguf_package_file(KNOWN_MODELS["smollm2-135m"])
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer("Feature 0: 3\nFeature 1: 4\nOutput:", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)


def test_the_embedded_gguf_file_is_quantized_as_the_readme_says():
    """README: 210 weight matrices in Q4_1, the tied token embedding in Q8_0 and 61 norm
    vectors in float32, read with gguf, the library transformers dequantizes the file with."""
    from collections import Counter

    from gguf import GGUFReader

    from minormech.models import gguf_package_file

    tensors = GGUFReader(gguf_package_file(KNOWN_MODELS["smollm2-135m"])).tensors
    assert Counter(t.tensor_type.name for t in tensors) == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert next(t for t in tensors if t.name == "token_embd.weight").tensor_type.name == "Q8_0"
    assert not any(t.name == "output.weight" for t in tensors)  # tied: the embedding is the output layer


def test_unknown_id_and_missing_path_are_clear():
    with pytest.raises(KeyError, match="unknown model id 'nope'"):
        resolve_model_spec({"id": "nope"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_model(resolve_model_spec({"id": "x", "path": "/nonexistent/model"}), "/tmp/unused")


def test_local_path_model(smollm2_manifest, tmp_path):
    spec = resolve_model_spec({"id": "my-model", "path": smollm2_manifest.load_from})
    assert spec.num_layers == 30 and spec.site_widths["k"] == 192  # read from its config.json
    manifest = prepare_model(spec, tmp_path)
    model, tokenizer = load_model(manifest, "cpu", "float32")
    assert manifest.source == "path" and len(model.model.layers) == 30


def test_hub_model_prepared_from_a_cache_and_loaded_offline(smollm2_manifest, tmp_path):
    """A hub model is found in the configured download cache with HF_HUB_OFFLINE=1 (as on a
    login node after `download_model` ran, or a pre-filled cache), and the manifest points the
    GPU jobs at the local snapshot. The cache is laid out as huggingface_hub lays it out."""
    cache = tmp_path / "models"
    snapshot = cache / "models--local--smollm2" / "snapshots" / ("0" * 40)
    shutil.copytree(smollm2_manifest.load_from, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = (
        "import json, sys; from minormech.models import "
        "download_hub_model, load_model, prepare_model, resolve_model_spec;"
        "spec = resolve_model_spec({'id': 'hub-smollm2', 'hub': 'local/smollm2'});"
        "manifest = prepare_model(spec, sys.argv[1], download_hub_model(spec, sys.argv[2]));"
        "m, t = load_model(manifest, 'cpu', 'auto');"
        "print(manifest.load_from, manifest.num_layers, len(m.model.layers), m.dtype)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "elsewhere")}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out"), str(cache)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(snapshot), "30", "30", "torch.float32"]


#: The paper's models by id with the packaged architecture that has their shape.
PAPER_ARCHITECTURES = {"llama-3.2-3b": "llama-3.2-3b", "llama-3.1-8b": "llama-3.1-8b"}


@pytest.mark.parametrize("architecture", architectures())
def test_plan_facts_equal_the_model_transformers_builds_from_the_architecture(architecture):
    """The parameter count the storage and memory plans use (architecture_parameters) and
    every site's width from the site table equal those of the model transformers builds
    from the packaged config.json, at the paper's own sizes (8B included): built on the
    meta device with accelerate, so no weight is allocated. (init_empty_weights leaves a
    tied lm_head untied, counted twice, until tie_weights() runs, as accelerate's docs say;
    a model built on a real device is tied by its constructor.)"""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = architecture_config(architecture)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    model.tie_weights()
    assert next(model.parameters()).device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == architecture_parameters(config)
    layer = model.model.layers[0]
    modules = {"q": layer.self_attn.q_proj, "k": layer.self_attn.k_proj, "v": layer.self_attn.v_proj}
    widths = {site: module.out_features for site, module in modules.items()}
    widths |= {"o": layer.self_attn.o_proj.out_features, "mlp": layer.mlp.down_proj.out_features}
    spec = shaped_spec("m", architecture, "llama-3")
    assert spec.num_layers == len(model.model.layers)
    assert {site: spec.site_widths[site] for site in widths} == widths
    for model_id, name in PAPER_ARCHITECTURES.items():
        if name == architecture:  # the registry's typed-in facts of the paper's models agree too
            known = KNOWN_MODELS[model_id]
            assert (known.num_layers, known.site_widths, known.query_heads) == (
                spec.num_layers,
                spec.site_widths,
                config["num_attention_heads"],
            )
