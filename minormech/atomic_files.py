"""Write then rename: every file a job writes that a later job reads (shards, prompt files,
attribution maps, xi) is written under a temporary name and renamed into place when
complete, so a killed job never leaves a file that looks complete, and a write that fails
(a full disk, a refused value) removes its temporary file. Needs neither torch nor h5py, so
the prompt writer uses it too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """Where a file is written before publish renames it into place."""
    return path.with_name(path.name + ".tmp")


def publish(tmp: Path, path: Path) -> None:
    """Rename a completely written temporary file to `path`, with the permissions of any
    output (the temporary file is private), so a killed job never leaves a file that
    looks complete."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextmanager
def written_in_place_of(path: Path) -> Iterator[Path]:
    """The temporary name to write `path` under; published (renamed into place) when the
    block ends normally, removed when it raises, so a failed write leaves neither a file
    that looks complete nor a stray temporary one."""
    tmp = temporary_name(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, path)
