"""Model registry and loaders: the embedded GGUF model, a local path, and a hub name
resolved offline from an HF_HOME cache (the cluster's situation), all on real weights."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from minormech.models import KNOWN_MODELS, ModelManifest, load_model, prepare_model, resolve_model_spec


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


def test_hub_model_loads_offline_from_hf_home(smollm2_manifest, tmp_path):
    """A hub name resolves from the HF_HOME cache with HF_HUB_OFFLINE=1, as on compute nodes
    without internet. The cache is laid out as huggingface_hub lays it out."""
    snapshot = tmp_path / "hf" / "hub" / "models--local--smollm2" / "snapshots" / ("0" * 40)
    shutil.copytree(smollm2_manifest.load_from, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    manifest = ModelManifest(id="hub-smollm2", source="hub", load_from="local/smollm2", num_layers=30, site_widths={})
    code = (
        "import json, sys; from minormech.models import ModelManifest, load_model;"
        "m, t = load_model(ModelManifest(**json.loads(sys.argv[1])), 'cpu', 'auto');"
        "print(len(m.model.layers), m.dtype)"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", code, json.dumps(vars(manifest))], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["30", "torch.float32"]
