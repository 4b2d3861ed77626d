"""Activation shards: one file per (model, task, prompt set, chunk), in safetensors (the
default) or HDF5 (``activations.format``; minormech.hdf5_shards). The file's suffix says
which (``.safetensors``, ``.h5``); writers and readers dispatch on it, and both formats hold
the same tensors, the same header and pass the same checks.

Why safetensors by default: it stores bfloat16 natively, loads without pickle and
memory-maps, so reading one (site, layer) is one contiguous read of one tensor. HDF5 adds
chunked, optionally compressed storage (a reader can take one prompt's rows) and is what
many analysis tools read.

Layout of a shard:
- one tensor per (site, layer) under its hook name (minormech.sites: ``blocks.3.attn.hook_k``,
  ``blocks.3.hook_resid_post``, ...): [total tokens of the chunk, width], the prompts'
  token activations concatenated in prompt order (no padding stored);
- ``prompt_ids`` and ``lengths``: [prompts], int64;
- metadata: format version, model id, task, prompt set, chunk, sites, layers, store
  dtype and the SHA-256 of the prompts it was made from, so that a reader can refuse a
  shard that belongs to another run; and the SHA-256 of every tensor's bytes
  (``tensor_sha256``), so that a reader refuses values changed under an intact header
  (zeroed by a failing disk, rewritten by hand) instead of computing a plausible wrong
  result from them. ``python -m minormech.verify`` checks whole shards against it.

A shard is written whole from memory (``save_tensors`` streams each tensor's bytes instead
of building the file in memory as safetensors' ``save_file`` does) to a temporary name and
renamed: a killed job leaves no file that looks complete, and a failed write (a full disk)
removes its temporary file. The same config and seed give
byte-identical files (tensor names and metadata sorted).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from minormech.atomic_files import written_in_place_of
from minormech.hdf5_shards import Hdf5File, Hdf5Settings, write_hdf5
from minormech.hooks import hook_name
from minormech.provenance import PROMPTS_KEY, PromptDigests, check_current, from_text

#: 3: every tensor's SHA-256 in the metadata (2 had none; 1 keyed tensors by
#: ``blocks.{layer}.hook_{site}`` for every site); readers refuse any other version.
SHARD_FORMAT_VERSION = "3"
#: The metadata key of the {tensor name: SHA-256 of its bytes} table.
CHECKSUMS_KEY = "tensor_sha256"
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: activations.format -> the suffix of its shard files.
SHARD_SUFFIXES = {"safetensors": ".safetensors", "hdf5": ".h5"}


class ShardError(ValueError):
    """A shard that is missing, damaged or from another run; the message names the file."""


class NonFiniteError(ValueError):
    """A computed tensor with NaN or infinite values that a job refused to write."""


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of a tensor is finite (integer and bool tensors always are)."""
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes in memory order: what a shard's header records per
    tensor, the same for both formats (HDF5 keeps bfloat16 as its raw 16-bit words)."""
    flat = tensor.detach().to("cpu").contiguous().view(-1)
    return hashlib.sha256(memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"").hexdigest()


def hook_widths(site_widths: dict[str, int], sites: Sequence[str], layers: Sequence[int]) -> dict[str, int]:
    """{hook name: feature width} of every (site, layer), from a model manifest's site widths:
    what a reader checks each stored tensor's last dimension against."""
    return {hook_name(site, layer): site_widths[site] for site in sites for layer in layers}


def check_tensor(path: Path, name: str, tensor: torch.Tensor, width: int | None) -> None:
    """ShardError naming the file unless the tensor's last dimension is `width` (when given)
    and every value is finite."""
    if width is not None and (tensor.ndim == 0 or tensor.shape[-1] != width):
        raise ShardError(
            f"{path}: {name} has shape {list(tensor.shape)}, but the model's site is {width} wide; "
            "the file is damaged or from another model: delete it and rerun"
        )
    if not is_finite(tensor):
        raise ShardError(f"{path}: {name} holds NaN or infinite values; the file is damaged: delete it and rerun")


@dataclass(frozen=True)
class ShardHeader:
    model_id: str
    task: str
    prompt_set: str
    chunk: int
    sites: tuple[str, ...]
    layers: tuple[int, ...]
    store_dtype: str
    prompts_sha256: str

    def to_metadata(self) -> dict[str, str]:
        return {
            "format_version": SHARD_FORMAT_VERSION,
            "model_id": self.model_id,
            "task": self.task,
            "prompt_set": self.prompt_set,
            "chunk": str(self.chunk),
            "sites": json.dumps(list(self.sites)),
            "layers": json.dumps(list(self.layers)),
            "store_dtype": self.store_dtype,
            "prompts_sha256": self.prompts_sha256,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> ShardHeader:
        return cls(
            model_id=meta["model_id"],
            task=meta["task"],
            prompt_set=meta["prompt_set"],
            chunk=int(meta["chunk"]),
            sites=tuple(json.loads(meta["sites"])),
            layers=tuple(json.loads(meta["layers"])),
            store_dtype=meta["store_dtype"],
            prompts_sha256=meta["prompts_sha256"],
        )


_SAFETENSORS_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_tensors(
    tensors: dict[str, torch.Tensor],
    path: str | Path,
    metadata: dict[str, str] | None = None,
    made_from: str = "the job's inputs",
) -> None:
    """Write a safetensors file atomically and reproducibly; refuse (NonFiniteError, naming
    the tensor and `made_from`, what the job computed it from) a floating tensor that holds
    NaN or infinite values, so a broken computation never becomes a file that looks right.

    safetensors' own ``save_file`` builds the whole file in memory (about twice the data at
    its peak) and writes the metadata keys in a random order, so two runs that compute
    identical tensors write different bytes. This writer emits the format directly: the
    header (tensor names and metadata keys sorted), then each tensor's bytes streamed from
    its memory, into a temporary name that is renamed when complete. Any safetensors
    reader reads the result; the arguments are save_file's.
    """
    path = Path(path)
    names = sorted(tensors)
    refuse_non_finite(path, tensors, made_from)
    entries: dict[str, dict] = {}
    offset = 0
    for name in names:
        tensor = tensors[name]
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{path}: tensor {name} has dtype {tensor.dtype}, which safetensors cannot store")
        size = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header = {"__metadata__": dict(sorted((metadata or {}).items())), **entries} if metadata else entries
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    with written_in_place_of(path) as tmp, open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name in names:
            tensor = tensors[name].detach().to("cpu").contiguous()
            if tensor.numel():
                handle.write(memoryview(tensor.view(-1).view(torch.uint8).numpy()))


def write_shard(
    path: str | Path,
    header: ShardHeader,
    activations: dict[tuple[str, int], torch.Tensor],
    prompt_ids: Sequence[int],
    lengths: Sequence[int],
    made_from: str = "the job's inputs",
    hdf5: Hdf5Settings = Hdf5Settings(),
) -> None:
    """Write activations[(site, layer)] = [sum(lengths), width] atomically, in the format
    the path's suffix names (`hdf5`: how an ``.h5`` shard is chunked and compressed);
    refused (NonFiniteError) when a value is not finite."""
    path = Path(path)
    total = int(sum(lengths))
    tensors = {
        "prompt_ids": torch.tensor(list(prompt_ids), dtype=torch.int64),
        "lengths": torch.tensor(list(lengths), dtype=torch.int64),
    }
    for (site, layer), values in activations.items():
        if values.shape[0] != total:
            raise ValueError(f"{hook_name(site, layer)} has {values.shape[0]} rows, expected {total}")
        tensors[hook_name(site, layer)] = values.contiguous()
    checksums = {name: tensor_sha256(tensor) for name, tensor in sorted(tensors.items())}
    metadata = {**header.to_metadata(), CHECKSUMS_KEY: json.dumps(checksums, separators=(",", ":"))}
    if is_hdf5(path):
        refuse_non_finite(path, tensors, made_from)  # save_tensors checks it itself
        with written_in_place_of(path) as tmp:
            write_hdf5(tmp, tensors, metadata, hdf5)
    else:
        save_tensors(tensors, path, metadata, made_from)


def refuse_non_finite(path: Path, tensors: dict[str, torch.Tensor], made_from: str) -> None:
    """NonFiniteError naming the first tensor (in name order) that holds NaN or infinite
    values and `made_from`, what the job computed it from."""
    for name in sorted(tensors):
        if not is_finite(tensors[name]):
            raise NonFiniteError(
                f"{path}: not written: tensor {name} holds NaN or infinite values, computed from {made_from}"
            )


class _SafetensorsFile:
    """A safetensors file with the calls Shard makes: metadata(), get_tensor(name), shape(name)."""

    def __init__(self, path: Path):
        self._file = safe_open(str(path), framework="pt")

    def metadata(self) -> dict[str, str]:
        return self._file.metadata() or {}

    def shape(self, name: str) -> list[int]:
        return self._file.get_slice(name).get_shape()

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._file.get_tensor(name)


def open_tensor_file(path: Path) -> _SafetensorsFile | Hdf5File:
    """The shard at `path` opened by the reader its suffix names."""
    return Hdf5File(path) if is_hdf5(path) else _SafetensorsFile(path)


def is_hdf5(path: Path) -> bool:
    """Whether a shard's suffix names the HDF5 format (else it is safetensors)."""
    return path.suffix == SHARD_SUFFIXES["hdf5"]


class Shard:
    """Read access to one shard with its header checked against what the caller expects."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise ShardError(f"{self.path}: shard does not exist; rerun snakemake, which remakes it (rule activations)")
        kind = "HDF5" if is_hdf5(self.path) else "safetensors"
        try:
            self._file = open_tensor_file(self.path)
            meta = self._file.metadata()
        except Exception as error:  # safetensors and h5py raise their own error types for bad files
            raise ShardError(
                f"{self.path}: not a readable {kind} shard ({error}); it is truncated or damaged: delete it and rerun"
            ) from None
        if meta.get("format_version") != SHARD_FORMAT_VERSION:
            raise ShardError(
                f"{self.path}: shard format {meta.get('format_version')!r}, expected "
                f"{SHARD_FORMAT_VERSION!r}; delete it and rerun"
            )
        self.header = ShardHeader.from_metadata(meta)
        self.checksums: dict[str, str] = json.loads(meta.get(CHECKSUMS_KEY, "{}"))
        self.site_widths: dict[str, int] = {}
        try:
            self.prompt_ids = self._file.get_tensor("prompt_ids")
            self.lengths = self._file.get_tensor("lengths")
        except Exception as error:
            raise ShardError(f"{self.path}: cannot read its prompt index ({error}); delete it and rerun") from None
        for name in ("prompt_ids", "lengths"):
            self._check_sum(name, getattr(self, name))
        self.offsets = packed_offsets(self.lengths)

    def expect(self, **fields) -> Shard:
        """Raise ShardError unless every given header field has the given value."""
        for key, wanted in fields.items():
            found = getattr(self.header, key)
            if found != wanted:
                raise ShardError(
                    f"{self.path}: shard has {key}={found!r} but this run expects {wanted!r}; "
                    "it was made by another configuration: delete it and rerun"
                )
        return self

    def expect_widths(self, site_widths: dict[str, int]) -> Shard:
        """Check every tensor read against these site widths (a model manifest's)."""
        self.site_widths = dict(site_widths)
        return self

    def width(self, site: str, layer: int) -> int:
        """Feature width of one (site, layer), from the header alone."""
        return self._file.shape(hook_name(site, layer))[-1]

    def read(self, site: str, layer: int) -> torch.Tensor:
        """[total tokens, width] activations of one (site, layer): one contiguous read,
        checked for its row count, its width (expect_widths) and finite values."""
        name = hook_name(site, layer)
        if site not in self.header.sites or layer not in self.header.layers:
            raise ShardError(
                f"{self.path}: has no {name} (it holds sites {list(self.header.sites)}, layers "
                f"{list(self.header.layers)}); it was made by another configuration: delete it and rerun"
            )
        try:
            values = self._file.get_tensor(name)
        except Exception as error:
            raise ShardError(f"{self.path}: cannot read {name} ({error}); delete it and rerun") from None
        if values.shape[0] != int(self.offsets[-1]):
            raise ShardError(
                f"{self.path}: {name} has {values.shape[0]} rows, lengths say {int(self.offsets[-1])}; "
                "the shard is damaged: delete it and rerun"
            )
        check_tensor(self.path, name, values, self.site_widths.get(site))
        if values.dtype != STORE_DTYPES.get(self.header.store_dtype):
            raise ShardError(
                f"{self.path}: {name} is stored as {str(values.dtype).removeprefix('torch.')}, but its header "
                f"says store_dtype {self.header.store_dtype}; the file is damaged: delete it and rerun"
            )
        self._check_sum(name, values)
        return values

    def verify(self) -> int:
        """Read every (site, layer) of the header and check it (rows, finite values, dtype,
        checksum); returns how many tensors were checked. ShardError on the first bad one."""
        for site in self.header.sites:
            for layer in self.header.layers:
                self.read(site, layer)
        return len(self.header.sites) * len(self.header.layers) + 2

    def _check_sum(self, name: str, values: torch.Tensor) -> None:
        """ShardError unless the tensor's bytes have the SHA-256 its header records."""
        if self.checksums.get(name) != tensor_sha256(values):
            raise ShardError(
                f"{self.path}: {name} does not match the checksum in its header (its values were changed "
                "after it was written); the file is damaged: delete it and rerun"
            )


def load_tensors(
    path: str | Path, needed: Sequence[str] = (), widths: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """A whole small safetensors file (attribution map, xi, probe predictions) with the same
    kind of one-line error as shards: missing, damaged, without a tensor this run needs, a
    tensor whose last dimension is not its `widths` entry (hook_widths of the model's
    manifest), or a value that is not finite."""
    path = Path(path)
    if not path.exists():
        raise ShardError(f"{path}: does not exist; rerun snakemake, which remakes it")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for bad headers
        raise ShardError(
            f"{path}: not a readable safetensors file ({error}); it is truncated or damaged: delete it and rerun"
        ) from None
    missing = [name for name in needed if name not in tensors]
    if missing:
        raise ShardError(
            f"{path}: has no {missing[0]} ({len(missing)} of the {len(needed)} tensors this run needs are missing); "
            "it was made by another configuration: delete it and rerun"
        )
    for name, tensor in tensors.items():
        check_tensor(path, name, tensor, (widths or {}).get(name))
    return tensors


def load_current_tensors(
    path: str | Path, needed: Sequence[str] = (), widths: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """load_tensors for a job: also refuses a result computed from other prompts than its
    prompt files hold now (minormech.provenance; the recorded paths are relative to the
    working directory, where jobs run)."""
    tensors = load_tensors(path, needed, widths)
    check_result(path)
    return tensors


def check_result(path: str | Path) -> None:
    """Refuse a small safetensors result computed from other prompts than its prompt files
    hold now, or one that records none (minormech.provenance.check_current)."""
    check_current(path, recorded_prompts(path))


def recorded_prompts(path: str | Path) -> PromptDigests:
    """The prompt files a small safetensors result was computed from, for the results made
    from it to record in turn; ShardError naming the file when it cannot be read."""
    try:
        metadata = _SafetensorsFile(Path(path)).metadata()
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise ShardError(f"{path}: not a readable safetensors file ({error}); delete it and rerun") from None
    return from_text(path, metadata.get(PROMPTS_KEY))


def packed_offsets(lengths: torch.Tensor) -> torch.Tensor:
    """[n + 1] start row of each prompt in a packed [tokens, d] tensor, and the total."""
    return torch.cat([torch.zeros(1, dtype=torch.int64), lengths.to(torch.int64).cumsum(0)])


def chunk_rows(n_prompts: int, n_chunks: int) -> list[np.ndarray]:
    """Prompt indices of each chunk of a prompt set (activations.chunks): shard mode writes
    one shard per chunk; stream mode shuffles by the same chunks, so both train alike."""
    return np.array_split(np.arange(n_prompts), n_chunks)


def shard_bytes(n_tokens: int, widths: dict[str, int], sites: Sequence[str], n_layers: int, store_dtype: str) -> int:
    """Bytes of activation data for n_tokens tokens (the files add a few KB of header)."""
    itemsize = STORE_DTYPES[store_dtype].itemsize
    return n_tokens * n_layers * sum(widths[s] for s in sites) * itemsize
