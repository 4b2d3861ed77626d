"""One caching job, timed in its own process: the prompts through the model, every
configured site of every layer kept (unpadded rows, store dtype) and written to one
safetensors file. Four implementations of the same job:

- ``plain``: ``model(input_ids, attention_mask)`` only, nothing kept (the floor the
  issue names); ``plain_decoder``: ``model.model(...)``, the same without the vocabulary
  projection, which the caching job skips too (a stricter floor);
- ``minormech``: what the activations rule runs (``extract_activations`` + ``write_shard``);
- ``transformer_lens``: ``TransformerBridge.run_with_cache`` (TransformerLens 4.x, which
  has no ``HookedTransformer``) with a names filter, then the same copy and write;
- ``nnsight``: ``LanguageModel.trace`` with ``.output.save()`` on each site module, then
  the same copy and write.

Each runs in a fresh process (TransformerLens forces eager attention on the model it
wraps) and prints one JSON line: seconds of the fastest repeat, peak memory during the
job above what the loaded model already used (RSS on CPU, allocated memory on CUDA),
and the bytes written.

    python -m benchmarks.caching --impl minormech --prompts P --out DIR [options]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import best_of, load_benchmark_model, synchronize
from minormech.activations import Recording, extract_activations, pad_token_id
from minormech.hdf5_shards import Hdf5Settings
from minormech.prompts import prompts_digest, read_prompts
from minormech.runner import RunOptions, batched, right_padded
from minormech.shards import STORE_DTYPES, ShardHeader, write_shard
from minormech.sites import OUTPUT, get_site, hook_name

IMPLEMENTATIONS = ("plain", "plain_decoder", "minormech", "transformer_lens", "nnsight")


class PeakMemory:
    """Peak memory of this process while the block runs, above its level at entry."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start, self._peak, self._stop = self._rss(), self._rss(), threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self._peak = max(self._peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._peak, self._rss()) - self._start


def copy_and_write(
    path: Path, prompts, sites, layers, store_dtype: str, run_batch: Callable, batch_size: int, pad_id: int, device
) -> None:
    """The part a peer library leaves to its user: per batch, the sites' [B, S, width]
    tensors from `run_batch(ids, mask)` reduced to unpadded rows in the store dtype on
    the CPU, then one shard written like the pipeline's."""
    dtype = STORE_DTYPES[store_dtype]
    rows: dict[tuple[str, int], list[torch.Tensor]] = {(s, l): [] for l in layers for s in sites}
    for batch in batched(prompts, batch_size):
        ids, mask = right_padded([p.input_ids for p in batch], pad_id, device)
        keep = mask.bool()
        for key, values in run_batch(ids, mask).items():
            rows[key].append(values.reshape(*values.shape[:2], -1)[keep].to("cpu", dtype))
    write_benchmark_shard(
        path, prompts, sites, layers, store_dtype, {key: torch.cat(parts) for key, parts in rows.items()}
    )


def write_benchmark_shard(
    path: Path,
    prompts,
    sites,
    layers,
    store_dtype: str,
    activations,
    prompt_set: str = "probe_train",
    hdf5: Hdf5Settings = Hdf5Settings(),
) -> None:
    """One shard as the activations rule writes it (header of a model named 'benchmark'),
    in the format of the path's suffix."""
    header = ShardHeader(
        model_id="benchmark",
        task="LR",
        prompt_set=prompt_set,
        chunk=0,
        sites=tuple(sites),
        layers=tuple(layers),
        store_dtype=store_dtype,
        prompts_sha256=prompts_digest(prompts),
    )
    write_shard(path, header, activations, [p.id for p in prompts], [p.length for p in prompts], hdf5=hdf5)


def transformer_lens_runner(model, tokenizer, sites, layers, device):
    """run_with_cache on TransformerLens' bridge; its names for our sites."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers("benchmark", hf_model=model, tokenizer=tokenizer, device=str(device))
    wanted = {
        hook_name(s, layer): (s, layer) for layer in layers for s in sites
    }  # the site table's names are TransformerLens'

    @torch.inference_mode()
    def run(ids, mask):
        _, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=list(wanted), return_cache_object=False)
        return {wanted[name]: values for name, values in cache.items() if name in wanted}

    return run


def nnsight_runner(model, tokenizer, sites, layers):
    """LanguageModel.trace with .output.save() on each site module."""
    from nnsight import LanguageModel

    wrapped = LanguageModel(model, tokenizer=tokenizer)

    def envoy(site, layer):
        row = get_site(site)
        if row.kind != OUTPUT:
            raise ValueError(f"nnsight runner: site {site} is a module input; it times module outputs only")
        module = wrapped.model.layers[layer]
        for name in filter(None, row.module.split(".")):
            module = getattr(module, name)
        return module

    envoys = {(site, layer): envoy(site, layer) for layer in layers for site in sites}

    @torch.inference_mode()
    def run(ids, mask):
        saved = {}
        with wrapped.trace({"input_ids": ids, "attention_mask": mask}):
            for key, envoy in envoys.items():
                saved[key] = envoy.output.save()
        return saved

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--sites", nargs="+", default=["k"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--store-dtype", default="float16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tokenizer = load_benchmark_model(args.model, args.device, args.dtype)
    prompts = read_prompts(args.prompts)
    layers = list(range(len(model.model.layers)))
    pad_id = pad_token_id(tokenizer)
    path = args.out / f"{args.impl}.safetensors"

    if args.impl in ("plain", "plain_decoder"):
        forward = model if args.impl == "plain" else model.model

        def job():
            with torch.inference_mode():
                for batch in batched(prompts, args.batch_size):
                    ids, mask = right_padded([p.input_ids for p in batch], pad_id, device)
                    forward(input_ids=ids, attention_mask=mask)
    elif args.impl == "minormech":

        def job():
            activations = extract_activations(
                model,
                prompts,
                Recording(args.sites, layers, STORE_DTYPES[args.store_dtype]),
                RunOptions(args.batch_size, pad_id),
            )
            write_benchmark_shard(path, prompts, args.sites, layers, args.store_dtype, activations)
    else:
        runner = (
            transformer_lens_runner(model, tokenizer, args.sites, layers, device)
            if args.impl == "transformer_lens"
            else nnsight_runner(model, tokenizer, args.sites, layers)
        )

        def job():
            copy_and_write(path, prompts, args.sites, layers, args.store_dtype, runner, args.batch_size, pad_id, device)

    warm = prompts[: args.batch_size]
    with torch.inference_mode():  # first-call costs (allocator, kernels) are not the job's
        ids, mask = right_padded([p.input_ids for p in warm], pad_id, device)
        model(input_ids=ids, attention_mask=mask)
    synchronize(device)
    with PeakMemory(device) as memory:
        seconds = best_of(args.repeats, device, job)
    result = {
        "impl": args.impl,
        "seconds": seconds,
        "peak_mb": memory.peak_bytes / 2**20,
        "tokens": sum(p.length for p in prompts),
        "file_bytes": path.stat().st_size if path.exists() else 0,
        "sites": args.sites,
        "layers": len(layers),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
