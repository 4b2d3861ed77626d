"""Which prompt files a result was computed from, so that whoever reads the result can tell
whether those files still hold the prompts it was computed from.

Snakemake reruns a job when an input is newer than its outputs, so a prompt file that was
remade, replaced or restored with an old timestamp can leave results that describe other
prompts than the ones on disk, and nothing in the files would show it. Every result made
from prompts (activation shards record their own digest, see minormech.shards; attribution
maps, xi maps, probe tables and patching tables record these) therefore records a map
{prompt file: SHA-256 of its records, as its header holds it}; results made from other
results carry their inputs' maps merged. A reader checks the map against the headers of
the files on disk now and stops with one line naming the result and the prompt file that
changed.

The paths are as Snakemake gives them to the job: relative to the working directory, so a
copy of a whole working directory keeps its records valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from minormech.prompts import recorded_digest

#: The metadata key (safetensors) or JSON key under which a result keeps its map.
PROMPTS_KEY = "prompts_sha256"

PromptDigests = dict[str, str]


class StaleResultError(ValueError):
    """A result computed from other prompts than its prompt files hold now."""


def prompt_digests(prompt_files: Iterable[str | Path]) -> PromptDigests:
    """{prompt file: its records' SHA-256}, for the prompt files a job read."""
    return {str(path): recorded_digest(path) for path in prompt_files}


def merged(*records: Mapping[str, str]) -> PromptDigests:
    """The union of several results' maps (a result made from results); refuses two
    results that were computed from different versions of one prompt file."""
    union: PromptDigests = {}
    for record in records:
        for path, digest in record.items():
            if union.setdefault(path, digest) != digest:
                raise StaleResultError(
                    f"{path}: the results read here were computed from different versions of it; "
                    "rerun snakemake with --forcerun prompts, which remakes everything made from it"
                )
    return dict(sorted(union.items()))


def to_text(record: Mapping[str, str]) -> str:
    """The map as it is stored (safetensors metadata values are strings)."""
    return json.dumps(dict(sorted(record.items())))


def from_text(result: str | Path, text: str | None) -> PromptDigests:
    """The map stored in `result`'s metadata; a result without one is refused (every result
    made from prompts records its map, so one without was written by an older version)."""
    if text is None:
        raise _unrecorded(result)
    return json.loads(text)


def _unrecorded(result: str | Path) -> StaleResultError:
    return StaleResultError(
        f"{result}: records no prompt files it was computed from (written by an older version); delete it and rerun"
    )


def check_current(result: str | Path, record: Mapping[str, str]) -> None:
    """Stop with one line if a prompt file `result` was computed from is gone or holds
    other prompts now. The remedy it names is touching the prompt file: Snakemake then
    reruns every job downstream of it. (Deleting the result would not do: Snakemake does
    not remake a missing file whose consumers are present and newer than their inputs.)"""
    for prompt_file, digest in sorted(record.items()):
        if not Path(prompt_file).exists():
            raise StaleResultError(
                f"{result}: computed from {prompt_file}, which no longer exists; rerun snakemake, which remakes both"
            )
        if recorded_digest(prompt_file) != digest:
            raise StaleResultError(
                f"{result}: computed from other prompts than {prompt_file} holds now (the prompt file was "
                f"remade or replaced after the result was written); touch {prompt_file} and rerun snakemake, "
                "which remakes everything computed from it"
            )


def check_summary(path: str | Path) -> None:
    """check_current for a result whose record is the PROMPTS_KEY entry of a JSON file (the
    summary of a probe table, the inputs file of a patching table), refusing one without."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise StaleResultError(f"{path}: not a readable JSON file ({error}); delete it and rerun") from None
    if not isinstance(content, dict) or PROMPTS_KEY not in content:
        raise _unrecorded(path)
    check_current(path, content[PROMPTS_KEY])
