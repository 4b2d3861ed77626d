"""What every benchmark shares: the model under test, its prompts, and a timer.

Two models can be timed:
- ``smollm2-135m``: the embedded default, loaded from the pipeline's prepared copy
  (``results/smollm2-135m/model``) or prepared here into ``benchmarks/.cache`` once;
- ``llama-3.2-3b-shaped``: Llama-3.2-3B's exact architecture (its published config.json,
  packaged in minormech/architectures/) with seeded random weights, drawn on the device
  as the pipeline draws every model without weights (minormech.random_init.random_model). Timing
  needs no trained weights, so the GPU numbers need nothing from a model hub.

Prompts are the pipeline's own LR prompts (Algorithm 1) made with the SmolLM2 tokenizer;
its token ids are valid inputs for the 3B-shaped model too (vocabulary 49152 < 128256).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from minormech.models import (
    ModelManifest,
    architecture_config,
    load_model,
    load_tokenizer,
    prepare_model,
    resolve_model_spec,
)
from minormech.prompts import Prompt, generate_prompts, prompt_weight_ids, read_prompts, write_prompts
from minormech.random_init import random_model
from minormech.tasks import get_task, make_weight_table

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache"
MODELS = ("smollm2-135m", "llama-3.2-3b-shaped")


def embedded_manifest() -> ModelManifest:
    """The prepared SmolLM2 copy: the pipeline's if it exists, else one made here."""
    for directory in (REPO / "results" / "smollm2-135m" / "model", CACHE / "smollm2-135m"):
        if (directory / "manifest.json").exists():
            return ModelManifest.read(directory / "manifest.json")
    directory = CACHE / "smollm2-135m"
    manifest = prepare_model(resolve_model_spec({"id": "smollm2-135m"}), directory)
    manifest.write(directory / "manifest.json")
    return manifest


def load_benchmark_model(name: str, device: str, dtype: str):
    """(model, tokenizer) in eval mode with frozen parameters, as the pipeline loads them."""
    manifest = embedded_manifest()
    if name == "smollm2-135m":
        return load_model(manifest, device, dtype)
    if name == "llama-3.2-3b-shaped":
        from transformers import AutoTokenizer, LlamaConfig

        dtypes = {"auto": torch.bfloat16, "bfloat16": torch.bfloat16, "float16": torch.float16}
        torch_dtype = dtypes.get(dtype, torch.float32)
        config = LlamaConfig(**architecture_config("llama-3.2-3b"))
        model = random_model(config, seed=0, dtype=torch_dtype, device=device)
        model.eval()
        model.requires_grad_(False)
        return model, AutoTokenizer.from_pretrained(manifest.load_from)
    raise ValueError(f"--model: unknown model {name!r}; choose from {MODELS}")


def benchmark_prompts(path: Path, count: int, max_prompt_tokens: int, seed: int = 0) -> list[Prompt]:
    """`count` LR probe-training prompts, made once and reused from `path`."""
    if path.exists():
        try:
            prompts = read_prompts(path)
        except ValueError:  # a prompt file of an older format: made again below
            prompts = []
        if len(prompts) == count and path.with_suffix(".tokens").read_text() == str(max_prompt_tokens):
            return prompts
    task = get_task("LR")
    table = make_weight_table(task, 40, seed)
    prompts = generate_prompts(
        task,
        table,
        prompt_weight_ids("probe_train", table, seed, count),
        "probe_train",
        load_tokenizer(embedded_manifest()),
        max_prompt_tokens,
        seed,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_prompts(path, prompts)
    path.with_suffix(".tokens").write_text(str(max_prompt_tokens))
    return prompts


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(device: torch.device) -> Iterator[dict]:
    """Wall seconds of the block, with the device's queue drained at both ends."""
    result = {}
    synchronize(device)
    start = time.perf_counter()
    yield result
    synchronize(device)
    result["seconds"] = time.perf_counter() - start


def best_of(repeats: int, device: torch.device, fn) -> float:
    """Fastest of `repeats` timed calls (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        with stopwatch(device) as timing:
            fn()
        times.append(timing["seconds"])
    return min(times)


def matmul_rate(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """Measured FLOP/s of one large square matmul in `dtype`: the device's practical peak,
    the floor a forward pass (2 x parameters FLOPs per token) is compared with."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n**3 / best_of(repeats, device, lambda: a @ b)
