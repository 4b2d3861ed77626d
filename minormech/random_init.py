"""Models with random weights: the randomly initialised control (config key
`controls.random_init`) and the shape-exact models (an architecture without its weights).

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

from minormech.models import ModelManifest, ModelSpec, architecture_config

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
        query_heads=base.query_heads,
    )


def _saved_dtype(config) -> torch.dtype:
    """The dtype the base model's weights are stored in (float32 when it does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def random_model(config, seed: int, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """The one way this pipeline makes a model without weights: transformers' own
    initialisation of `config` with torch seeded by `seed`, in `dtype` (None = the dtype the
    architecture is stored in: an 8B model needs the memory of one 8B model, not of a
    float32 copy), drawn on `device`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or _saved_dtype(config))


def draw_model(config, tokenizer, out_dir: str | Path, seed: int, record: dict) -> Path:
    """A random_model of `config` saved as safetensors with `tokenizer` and `record`
    (random_init.json) in out_dir, for later jobs to load."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = random_model(config, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    record = {**record, "seed": seed, "dtype": str(model.dtype)}
    (out_dir / "random_init.json").write_text(json.dumps(record, indent=2) + "\n")
    return out_dir.resolve()


def prepare_random_init(base: ModelManifest, out_dir: str | Path, seed: int) -> ModelManifest:
    """The random-init control of `base`: its architecture and tokenizer, weights drawn
    with draw_model."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(base.load_from)
    tokenizer = AutoTokenizer.from_pretrained(base.load_from)
    load_from = draw_model(config, tokenizer, out_dir, seed, {"base": base.id})
    return ModelManifest(
        id=random_init_id(base.id),
        source="random_init",
        load_from=str(load_from),
        num_layers=base.num_layers,
        site_widths=dict(base.site_widths),
    )


def prepare_shaped(spec: ModelSpec, out_dir: str | Path, seed: int) -> ModelManifest:
    """A shape-exact model: the packaged config.json of `spec`'s architecture and its
    named tokenizer, weights drawn with draw_model. It runs every code path a model of
    that architecture runs (layer count, grouped-query heads, widths, vocabulary, rotary
    scaling), without the trained weights no machine here can download."""
    from transformers import LlamaConfig

    from minormech.tokenizers import load_named_tokenizer

    config = LlamaConfig(**architecture_config(spec.location))
    record = {"architecture": spec.location, "tokenizer": spec.tokenizer}
    load_from = draw_model(config, load_named_tokenizer(spec.tokenizer), out_dir, seed, record)
    return ModelManifest(
        id=spec.id,
        source="shaped",
        load_from=str(load_from),
        num_layers=spec.num_layers,
        site_widths=dict(spec.site_widths),
    )
