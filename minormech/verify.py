"""Check a working directory's files against what they say of themselves, without running
the pipeline:

    python -m minormech.verify results/

Two kinds of file are checked; every other file under the folders named (model weights,
manifests, figures, CSV tables) is skipped.

- **Activation shards** (both formats): every tensor is read and its rows, finite values,
  stored dtype and the SHA-256 its header records are checked.
- **Results made from prompts** (attribution and xi maps, probe predictions and summaries,
  patching inputs): the digests of the prompt files they record are compared with what
  those files hold now (minormech.provenance). Snakemake reruns a job only when an input
  is newer than its outputs, so a prompt file put back with an old timestamp leaves results
  of other prompts that no job would notice until it reads them; this finds them all.

Run it from the working directory (results record prompt files relative to it), on a
cluster's scratch disk after copying shards, or whenever a job reports a damaged file, to
find every other one at once. Exit status 1 when a file fails; each failure is one line
naming the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from minormech.provenance import PROMPTS_KEY, StaleResultError, check_current, check_summary
from minormech.shards import SHARD_SUFFIXES, Shard, ShardError, is_hdf5, open_tensor_file, recorded_prompts

#: Suffixes of the files verify looks at under a folder.
CHECKED_SUFFIXES = (*SHARD_SUFFIXES.values(), ".json")


def candidate_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named, and the shard, safetensors and JSON files under the folders named,
    in sorted order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for suffix in CHECKED_SUFFIXES for p in path.rglob(f"*{suffix}"))
        else:
            found.append(path)
    return found


def kind_of(path: Path) -> str | None:
    """'shard', 'result' (a file recording the prompt files it came from) or None (a file
    verify has nothing to check in). A file that cannot be opened counts as a shard, so that
    the shard reader names what is wrong with it."""
    if path.suffix == ".json":
        try:
            return "result" if PROMPTS_KEY in json.loads(path.read_text()) else None
        except (OSError, ValueError):
            return None
    if is_hdf5(path):
        return "shard"
    try:
        metadata = open_tensor_file(path).metadata()
    except Exception:  # safetensors raises its own error types for a damaged file
        return "shard"
    if "prompt_set" in metadata or "format_version" in metadata:  # a shard header (it has a prompts_sha256 too)
        return "shard"
    return "result" if PROMPTS_KEY in metadata else None


def check(path: Path, kind: str) -> str:
    """The line for one intact file; ShardError or StaleResultError for a failing one."""
    if kind == "shard":
        return f"ok: {path} ({Shard(path).verify()} tensors)"
    if path.suffix == ".json":
        check_summary(path)
    else:
        check_current(path, recorded_prompts(path))
    return f"ok: {path} (made from the prompts its prompt files hold)"


def main(argv: Sequence[str] | None = None) -> int:
    checked = [
        (path, kind) for path in candidate_files(sys.argv[1:] if argv is None else argv) if (kind := kind_of(path))
    ]
    failed = 0
    for path, kind in checked:
        try:
            print(check(path, kind))
        except (ShardError, StaleResultError) as error:
            failed += 1
            print(f"error: {error}")
    shards = sum(kind == "shard" for _, kind in checked)
    print(f"{len(checked) - failed} of {len(checked)} files intact ({shards} shards, {len(checked) - shards} results)")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
