"""Check activation shards against their headers without running the pipeline:

    python -m minormech.verify results/llama-3.2-3b/activations

reads every tensor of every shard under the given files or folders (both formats) and
checks its rows, finite values, stored dtype and the SHA-256 its header records. Run it on
a cluster's scratch disk after copying shards, or whenever a job reports a damaged shard,
to find every other damaged file at once. Exit status 1 when a shard fails; each failure is
one line naming the file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from minormech.shards import SHARD_SUFFIXES, Shard, ShardError


def shard_files(paths: Iterable[str | Path]) -> list[Path]:
    """The shard files named, and those under the folders named, in sorted order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for suffix in SHARD_SUFFIXES.values() for p in path.rglob(f"*{suffix}"))
        else:
            found.append(path)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    paths = shard_files(sys.argv[1:] if argv is None else argv)
    failed = 0
    for path in paths:
        try:
            checked = Shard(path).verify()
        except ShardError as error:
            failed += 1
            print(f"error: {error}")
        else:
            print(f"ok: {path} ({checked} tensors)")
    print(f"{len(paths) - failed} of {len(paths)} shards intact")
    return 1 if failed or not paths else 0


if __name__ == "__main__":
    sys.exit(main())
