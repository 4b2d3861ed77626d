"""Shard formats compared on the embedded model's activations: safetensors against HDF5
uncompressed, lzf and gzip (minormech.hdf5_shards), for the question "which to choose".

The embedded model records all five sites of its 30 layers for `--prompts` LR prompts
(float16, as the default config stores them); each format then writes that shard (the
activations rule's write_shard), and the shard is read back as the probe rule reads it
(minormech.shards.Shard): one (site, layer) across the shard, and every (site, layer).
Before each read the file is flushed and dropped from the page cache
(posix_fadvise DONTNEED), so reads come from the disk, as on a first read after a job
wrote the shard on another node. Every value read back is checked against what was
written. Times are the fastest of `--repeats`.

    python -m benchmarks.shard_formats OUT.json [--prompts 32] [--max-prompt-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.caching import write_benchmark_shard
from benchmarks.common import CACHE, benchmark_prompts, load_benchmark_model
from minormech.activations import Recording, extract_activations, pad_token_id
from minormech.hdf5_shards import Hdf5Settings
from minormech.runner import RunOptions
from minormech.shards import STORE_DTYPES, Shard

SITES = ("q", "k", "v", "o", "mlp")
#: (label, suffix, HDF5 settings) of each format compared.
FORMATS = (
    ("safetensors", ".safetensors", Hdf5Settings()),
    ("hdf5", ".h5", Hdf5Settings("none")),
    ("hdf5 lzf", ".h5", Hdf5Settings("lzf")),
    ("hdf5 gzip", ".h5", Hdf5Settings("gzip")),
)


def drop_from_page_cache(path: Path) -> None:
    """Flush the file and ask the kernel to forget its pages, so the next read is from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fastest(repeats: int, before, timed) -> float:
    """Fastest of `repeats` calls of `timed`, each after `before` (untimed)."""
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        timed()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(path: Path, hdf5: Hdf5Settings, recorded: dict, prompts, layers, repeats: int) -> dict:
    """Write, one-(site, layer) read, whole read and size of one format's shard."""

    def write():
        write_benchmark_shard(path, prompts, SITES, layers, "float16", recorded, hdf5=hdf5)
        drop_from_page_cache(path)

    write_s = fastest(repeats, lambda: path.unlink(missing_ok=True), write)
    middle = layers[len(layers) // 2]
    one_s = fastest(repeats, lambda: drop_from_page_cache(path), lambda: Shard(path).read("mlp", middle))
    whole_s = fastest(
        repeats,
        lambda: drop_from_page_cache(path),
        lambda: [Shard(path).read(site, layer) for site in SITES for layer in layers],
    )
    shard = Shard(path)
    for (site, layer), values in recorded.items():
        if not torch.equal(shard.read(site, layer), values):
            raise AssertionError(f"{path}: {site} layer {layer} read back differs from what was written")
    return {"write_s": write_s, "read_one_site_layer_s": one_s, "read_whole_s": whole_s, "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="JSON file for the results")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = load_benchmark_model("smollm2-135m", "cpu", "float32")
    prompt_file = CACHE / f"prompts_{args.prompts}_{args.max_prompt_tokens}.jsonl"
    prompts = benchmark_prompts(prompt_file, args.prompts, args.max_prompt_tokens)
    layers = list(range(len(model.model.layers)))
    recorded = extract_activations(
        model, prompts, Recording(SITES, layers, STORE_DTYPES["float16"]), RunOptions(8, pad_token_id(tokenizer))
    )
    data_bytes = sum(values.numel() * values.element_size() for values in recorded.values())
    rows = []
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        for label, suffix, hdf5 in FORMATS:
            path = Path(work) / f"shard{suffix}"
            row = {"format": label, **measure(path, hdf5, recorded, prompts, layers, args.repeats)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    tokens = sum(p.length for p in prompts)
    result = {"prompts": len(prompts), "tokens": tokens, "activation_bytes": data_bytes, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
