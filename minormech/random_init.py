"""The randomly initialised control model (config key `controls.random_init`).

Probes can decode a variable from a network that learned nothing: a random transformer
still mixes the prompt's tokens, and the numbers in the prompt determine w. Running the
same probes on a randomly initialised model of the same architecture shows how much of
a probe curve the pretrained weights explain. The control needs no weights, only the
architecture's config and the tokenizer, and it is seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from minormech.models import ModelManifest, ModelSpec

#: Output folder suffix: the control of model `m` is results/m-random-init/.
RANDOM_INIT_SUFFIX = "-random-init"


def random_init_id(model_id: str) -> str:
    return f"{model_id}{RANDOM_INIT_SUFFIX}"


def random_init_spec(base: ModelSpec) -> ModelSpec:
    """The control's spec: the base's architecture facts, weights drawn, not loaded."""
    return ModelSpec(
        id=random_init_id(base.id),
        source="random_init",
        location=base.id,
        num_layers=base.num_layers,
        site_widths=dict(base.site_widths),
    )


def _saved_dtype(config) -> torch.dtype:
    """The dtype the base model's weights are stored in (float32 when it does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def prepare_random_init(base: ModelManifest, out_dir: str | Path, seed: int) -> ModelManifest:
    """Draw a model of the base's architecture with transformers' own initialisation
    (torch seeded with `seed`), save it as safetensors with the base's tokenizer, and
    return its manifest. Weights are drawn in the dtype the base is stored in, so an 8B
    control needs the memory of one 8B model, not of a float32 copy."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(base.load_from)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=_saved_dtype(config))
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base.load_from).save_pretrained(out_dir)
    (out_dir / "random_init.json").write_text(
        json.dumps({"base": base.id, "seed": seed, "dtype": str(model.dtype)}, indent=2) + "\n"
    )
    return ModelManifest(
        id=random_init_id(base.id),
        source="random_init",
        load_from=str(out_dir.resolve()),
        num_layers=base.num_layers,
        site_widths=dict(base.site_widths),
    )
