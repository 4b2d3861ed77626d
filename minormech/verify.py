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
  of other prompts that no job would notice until it reads them; this finds each of them.
  (The head views' per-head tables and the figures' CSVs record no prompt files; they are
  not checked.)

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

from minormech import plan as paths
from minormech.provenance import PROMPTS_KEY, check_summary
from minormech.shards import SHARD_SUFFIXES, Shard, check_result, open_tensor_file

#: Suffixes of the files verify looks at under a folder.
CHECKED_SUFFIXES = (*SHARD_SUFFIXES.values(), ".json")

#: Metadata keys by which a safetensors file is known as a result made from prompts (an
#: attribution map, xi, probe predictions) even when it records no prompt files.
RESULT_KEYS = (PROMPTS_KEY, "n_prompts", "pair", "variants")


class UnreadableFile(ValueError):
    """A file verify cannot open as the kind its name says."""


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
    """'shard', 'result' (a file made from prompts) or None (a file verify has nothing to
    check in: model weights, manifests, other JSON, files of other suffixes). UnreadableFile
    for a file of a checked suffix that does not open."""
    if path.suffix not in CHECKED_SUFFIXES:
        return None
    if path.suffix == ".json":
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UnreadableFile(f"{path}: not a readable JSON file ({error}); it is truncated or damaged") from None
        return "result" if isinstance(content, dict) and PROMPTS_KEY in content else None
    try:
        metadata = open_tensor_file(path).metadata()
    except Exception as error:  # safetensors and h5py raise their own error types for a damaged file
        raise UnreadableFile(f"{path}: not a readable tensor file ({error}); it is truncated or damaged") from None
    if "prompt_set" in metadata or "format_version" in metadata:  # a shard header (it has a prompts_sha256 too)
        return "shard"
    return "result" if any(key in metadata for key in RESULT_KEYS) else None


def check(path: Path) -> str | None:
    """The line for one intact file (None for a file with nothing to check); ValueError
    (ShardError, StaleResultError, UnreadableFile, a damaged prompt file's) for a failing one."""
    kind = kind_of(path)
    if kind == "shard":
        return f"ok: {path} ({Shard(path).verify()} tensors)"
    if kind == "result":
        if path.suffix == ".json":
            check_summary(path)
        else:
            check_result(path)
        return f"ok: {path} (made from the prompts its prompt files hold)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    checked = failed = 0
    for path in candidate_files(sys.argv[1:] if argv is None else argv):
        try:
            line = check(path)
        except ValueError as error:
            line, failed = f"error: {error}", failed + 1
        if line is not None:
            checked += 1
            print(line)
    print(f"{checked - failed} of {checked} files intact")
    if failed:
        print(
            "(a 'touch' line: touch that prompt file and rerun snakemake, which remakes everything computed from "
            "it; any other: delete the file and ask for it by name, `snakemake <file>`, after which a plain "
            "`snakemake` reruns what was made from it)"
        )
    if failed and not Path(paths.RESULTS).is_dir():
        print(f"(results record their prompt files relative to the working directory; no {paths.RESULTS}/ here)")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
