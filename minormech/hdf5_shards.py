"""Activation shards in HDF5 (``activations.format: hdf5``), beside the safetensors default.

One ``.h5`` file per shard, holding the same tensors and metadata as a safetensors shard
(minormech.shards): one dataset per hook name, ``prompt_ids`` and ``lengths``, and the
header's fields as attributes of the root group. What HDF5 adds is chunked storage: each
activation dataset is stored in chunks of whole rows (tokens) of about
``Hdf5Settings.chunk_kb`` KiB, so a reader takes one (site, layer), or one prompt's rows
of it, by reading only the chunks that hold them; and optional per-chunk compression
(lzf, fast; gzip, smaller). HDF5 has no bfloat16, so a bfloat16 tensor is stored as its
raw 16-bit words (uint16) with a ``dtype`` attribute saying so, and read back
bit-identical.

Safety and reproducibility, as for safetensors shards:
- no pickle: only numeric datasets are written or read; an object, string or compound
  dataset is refused (h5py would otherwise decode it into Python objects);
- written under a temporary name and renamed when complete, so a killed job leaves no file
  that looks complete;
- byte-identical for the same tensors: datasets and attributes are written in sorted order
  and without modification times (``track_times=False``);
- file locking is off (``locking=False``): a shard is written once under a private
  temporary name and never modified after the rename, and the POSIX locks HDF5 takes by
  default fail on some shared cluster file systems (NFS, Lustre), where they would
  otherwise need ``HDF5_USE_FILE_LOCKING=FALSE`` in every job's environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

#: The compressions a user may choose (h5py's built-in filters; gzip at h5py's default level 4).
COMPRESSIONS = ("none", "lzf", "gzip")
#: Stored dtype attribute -> the torch dtype read back; bfloat16 is stored as uint16 words.
_STORED_AS = {"bfloat16": torch.bfloat16}
#: numpy kinds a dataset may have: floats, signed and unsigned integers, booleans.
_NUMERIC_KINDS = "fiub"


@dataclass(frozen=True)
class Hdf5Settings:
    """How HDF5 shards are stored (config ``activations.hdf5``): the compression filter and
    the size of one chunk of rows, in KiB (HDF5's guidance is 10 KiB to 1 MiB)."""

    compression: str = "none"
    chunk_kb: int = 1024

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"activations.hdf5.compression: {self.compression!r} is not one of {list(COMPRESSIONS)}")

    def chunk_rows(self, n_rows: int, row_bytes: int) -> int:
        """Rows per chunk: whole rows, at most chunk_kb KiB, spread evenly over as few chunks
        as that allows. HDF5 stores the last chunk whole even when the data ends inside it,
        so chunks of the largest size that fits would waste up to one chunk per dataset (48%
        more bytes than safetensors on the quick config's shards, measured); even chunks
        waste less than one row per chunk."""
        largest = max(1, self.chunk_kb * 1024 // max(row_bytes, 1))
        n_chunks = -(-n_rows // largest)
        return max(1, -(-n_rows // max(n_chunks, 1)))


def write_hdf5(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], settings: Hdf5Settings) -> None:
    """Write `tensors` (name -> tensor) and `metadata` (root attributes) to `path` (the
    caller's temporary name: minormech.shards renames it when complete); 2-D tensors are
    chunked by rows and compressed as `settings` say."""
    try:
        _write(path, tensors, metadata, settings)
    except (OSError, RuntimeError) as error:  # HDF5 reports a failed write (a full disk) on flush or close
        reason = re.search(r"error message = '([^']*)'", str(error))
        raise OSError(f"{path}: HDF5 write failed: {reason[1] if reason else str(error).splitlines()[0]}") from None


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], settings: Hdf5Settings) -> None:
    compression = None if settings.compression == "none" else settings.compression
    with h5py.File(path, "w", locking=False) as handle:
        for key in sorted(metadata):
            handle.attrs[key] = metadata[key]
        for name in sorted(tensors):
            tensor = tensors[name].detach().to("cpu").contiguous()
            stored = tensor.view(torch.uint16) if tensor.dtype == torch.bfloat16 else tensor
            values = stored.numpy()
            options = {}
            if values.ndim == 2 and values.shape[0] > 0:
                rows = settings.chunk_rows(values.shape[0], values.shape[1] * values.itemsize)
                options = {"chunks": (rows, values.shape[1]), "compression": compression}
            dataset = handle.create_dataset(name, data=values, track_times=False, **options)
            if tensor.dtype == torch.bfloat16:
                dataset.attrs["dtype"] = "bfloat16"


class Hdf5File:
    """Read access to an HDF5 shard with the calls minormech.shards.Shard makes of a
    safetensors file: metadata(), get_tensor(name), shape(name)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = h5py.File(path, "r", locking=False)

    def metadata(self) -> dict[str, str]:
        return {key: _text(value) for key, value in self._file.attrs.items()}

    def shape(self, name: str) -> list[int]:
        return list(self._dataset(name).shape)

    def get_tensor(self, name: str) -> torch.Tensor:
        dataset = self._dataset(name)
        values = torch.from_numpy(np.ascontiguousarray(dataset[()]))
        stored_as = _text(dataset.attrs.get("dtype", ""))
        return values.view(_STORED_AS[stored_as]) if stored_as in _STORED_AS else values

    def _dataset(self, name: str) -> h5py.Dataset:
        dataset = self._file.get(name)
        if not isinstance(dataset, h5py.Dataset):
            raise KeyError(f"no dataset {name}")
        if dataset.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"dataset {name} has dtype {dataset.dtype}, not a number type; it is not read")
        return dataset


def _text(value) -> str:
    """An attribute as text (h5py returns str for variable-length strings, bytes for fixed)."""
    return value.decode() if isinstance(value, bytes) else str(value)
