import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minormech import verify
from minormech.hdf5_shards import Hdf5Settings
from minormech.hooks import hook_name
from minormech.shards import (
    SHARD_FORMAT_VERSION,
    NonFiniteError,
    Shard,
    ShardError,
    ShardHeader,
    hook_widths,
    load_tensors,
    save_tensors,
    shard_bytes,
    write_shard,
)


def _header(**over):
    fields = dict(
        model_id="m",
        task="LR",
        prompt_set="probe_train",
        chunk=0,
        sites=("k", "v"),
        layers=(0, 3),
        store_dtype="bfloat16",
        prompts_sha256="abc",
    )
    fields.update(over)
    return ShardHeader(**fields)


#: Both shard formats: every reader check below holds for each.
SUFFIXES = [".safetensors", ".h5"]


def _write(path, dtype=torch.bfloat16, hdf5=Hdf5Settings()):
    lengths = [3, 5]
    acts = {(s, layer): torch.randn(8, 4 if s == "k" else 6).to(dtype) for s in ("k", "v") for layer in (0, 3)}
    write_shard(path, _header(), acts, [10, 11], lengths, hdf5=hdf5)
    return acts


def _put_nan(path, name):
    """Rewrite one value of a stored tensor as NaN, keeping the file otherwise as it was."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as handle:
            values = handle[name][()]
            values[2, 1] = np.uint16(0x7FC0) if handle[name].attrs.get("dtype") == "bfloat16" else np.nan
            handle[name][...] = values
        return
    tensors = load_file(str(path))
    tensors[name][2, 1] = float("nan")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_keeps_values_dtype_and_metadata(tmp_path, suffix):
    path = tmp_path / f"chunk000{suffix}"
    acts = _write(path)
    shard = Shard(path)
    assert shard.header == _header()
    assert shard.prompt_ids.tolist() == [10, 11] and shard.lengths.tolist() == [3, 5]
    assert shard.offsets.tolist() == [0, 3, 8]
    for (site, layer), values in acts.items():
        read = shard.read(site, layer)
        assert read.dtype == torch.bfloat16 and torch.equal(read, values)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_reader_refuses_other_runs_and_missing_sites(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    _write(path)
    with pytest.raises(ShardError, match="model_id='m' but this run expects 'other'"):
        Shard(path).expect(model_id="other")
    with pytest.raises(ShardError, match=r"has no blocks\.0\.attn\.hook_q \(it holds sites \['k', 'v'\]"):
        Shard(path).read("q", 0)
    with pytest.raises(ShardError, match="does not exist"):
        Shard(tmp_path / f"none{suffix}")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_reader_checks_widths_against_the_model_and_refuses_non_finite_values(tmp_path, suffix):
    """Shard.read with expect_widths: a tensor narrower than the model's site, or one with
    NaN, is a ShardError naming the file and the tensor; a reader without widths still
    checks finiteness."""
    path = tmp_path / f"s{suffix}"
    _write(path)
    assert Shard(path).expect_widths({"k": 4, "v": 6}).read("v", 3).shape == (8, 6)
    with pytest.raises(
        ShardError, match=rf"s\{suffix}: blocks\.3\.attn\.hook_v has shape \[8, 6\], but the model's site is 7 wide"
    ):
        Shard(path).expect_widths({"k": 4, "v": 7}).read("v", 3)
    _put_nan(path, "blocks.0.attn.hook_k")
    with pytest.raises(ShardError, match=r"blocks\.0\.attn\.hook_k holds NaN or infinite values"):
        Shard(path).read("k", 0)


def test_writers_refuse_non_finite_values_and_readers_check_map_widths(tmp_path):
    """save_tensors (every shard, map and prediction file) refuses a tensor with NaN or inf,
    naming what it was computed from, and writes nothing; load_tensors checks each tensor
    against the model's widths (hook_widths) and refuses non-finite values."""
    path = tmp_path / "map.safetensors"
    with pytest.raises(
        NonFiniteError,
        match=r"map\.safetensors: not written: tensor b holds NaN or infinite values, computed from prompts\.jsonl",
    ):
        save_tensors({"a": torch.zeros(3), "b": torch.tensor([1.0, float("inf")])}, path, made_from="prompts.jsonl")
    assert not path.exists() and not list(tmp_path.iterdir())
    save_tensors({hook_name("k", 0): torch.zeros(4), hook_name("v", 0): torch.zeros(5)}, path)
    widths = hook_widths({"k": 4, "v": 6}, ["k", "v"], [0])
    assert widths == {hook_name("k", 0): 4, hook_name("v", 0): 6}
    assert set(load_tensors(path, list(widths), {hook_name("k", 0): 4})) == set(widths)
    with pytest.raises(ShardError, match=r"blocks\.0\.attn\.hook_v has shape \[5\], but the model's site is 6 wide"):
        load_tensors(path, list(widths), widths)


def test_tensors_are_stored_under_the_site_tables_hook_names(tmp_path):
    path = tmp_path / "s.safetensors"
    _write(path)
    with safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
    assert names == {"prompt_ids", "lengths", *(hook_name(s, layer) for s in ("k", "v") for layer in (0, 3))}
    assert "blocks.3.attn.hook_k" in names


def test_shard_of_an_older_format_is_refused_in_one_line(tmp_path):
    """Format 2 had no tensor checksums (1 also keyed every site as blocks.{layer}.hook_{site});
    a reader of format 3 refuses it rather than reading values it cannot check."""
    path = tmp_path / "old.safetensors"
    old_meta = {**_header().to_metadata(), "format_version": "2"}
    save_tensors(
        {"prompt_ids": torch.tensor([10]), "lengths": torch.tensor([8]), "blocks.0.hook_k": torch.zeros(8, 4)},
        path,
        old_meta,
    )
    with pytest.raises(ShardError) as error:
        Shard(path)
    assert str(error.value) == f"{path}: shard format '2', expected '{SHARD_FORMAT_VERSION}'; delete it and rerun"
    assert SHARD_FORMAT_VERSION == "3"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_shard_is_named(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    _write(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=rf"s\{suffix}: .*truncated or damaged"):
        shard = Shard(path)
        shard.read("v", 3)


def _rewrite(path, name, change):
    """Replace one stored tensor by change(tensor), header (checksums included) and the other
    tensors as they were: what a failing disk or a hand edit does."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as handle:
            stored = torch.from_numpy(handle[name][()])
            was_bf16 = handle[name].attrs.get("dtype") == "bfloat16"
            new = change(stored.view(torch.bfloat16) if was_bf16 else stored)
            del handle[name]
            handle.create_dataset(name, data=(new.view(torch.uint16) if new.dtype == torch.bfloat16 else new).numpy())
            if new.dtype == torch.bfloat16:
                handle[name].attrs["dtype"] = "bfloat16"
        return
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(path))
    tensors[name] = change(tensors[name]).contiguous()
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_values_changed_under_an_intact_header_are_refused(tmp_path, suffix):
    """Zeroed values keep a plausible shape and finite values, so only the header's
    checksum tells them from the real ones; a dtype other than the header's store_dtype is
    refused by name. Untouched tensors of the same shard still read."""
    path = tmp_path / f"s{suffix}"
    _write(path)
    name = hook_name("k", 3)
    _rewrite(path, name, torch.zeros_like)
    shard = Shard(path)
    assert torch.equal(shard.read("v", 3), shard.read("v", 3))  # the others are intact
    with pytest.raises(ShardError) as error:
        shard.read("k", 3)
    assert str(error.value) == (
        f"{path}: {name} does not match the checksum in its header (its values were changed after it "
        "was written); the file is damaged: delete it and rerun"
    )
    _write(path)
    _rewrite(path, name, lambda t: t.to(torch.float16))
    with pytest.raises(ShardError) as error:
        Shard(path).read("k", 3)
    assert str(error.value) == (
        f"{path}: {name} is stored as float16, but its header says store_dtype bfloat16; "
        "the file is damaged: delete it and rerun"
    )


def test_verify_checks_every_tensor_of_every_shard_in_a_folder(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    for suffix in SUFFIXES:
        _write(tmp_path / "a" / f"intact{suffix}")
    damaged = tmp_path / "b" / "zeroed.h5"
    _write(damaged)
    _rewrite(damaged, hook_name("v", 0), torch.zeros_like)
    assert verify.main([str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 of 2 files intact"
    assert verify.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("error:")] == [
        f"error: {damaged}: {hook_name('v', 0)} does not match the checksum in its header (its values were changed "
        "after it was written); the file is damaged: delete it and rerun"
    ]
    assert out[-2:] == [
        "2 of 3 files intact",
        "(a 'touch' line: touch that prompt file and rerun snakemake, which remakes everything computed from it; "
        "any other: delete the file and ask for it by name, `snakemake <file>`, after which a plain `snakemake` "
        "reruns what was made from it)",
    ]


FULL_DISK = """
import resource, signal, sys, torch
from minormech.shards import ShardHeader, write_shard
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
header = ShardHeader("m", "LR", "probe_train", 0, ("k",), (0,), "float32", "abc")
try:
    write_shard(sys.argv[1], header, {("k", 0): torch.ones(1024, 1024)}, [0], [1024])
except OSError as error:
    print("failed:", error.strerror or str(error).rsplit(": ", 1)[-1])
"""


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_write_that_fails_on_a_full_disk_leaves_no_file_behind(tmp_path, suffix):
    """A 4 MB shard written under a 1 MB file-size limit (the kernel refuses the write, as a
    full disk does): the writer raises and removes its temporary file, so neither a
    complete-looking shard nor a stray .tmp is left."""
    path = tmp_path / f"s{suffix}"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True)
    assert result.stdout.strip() == "failed: File too large", result.stdout + result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_shard_bytes():
    assert shard_bytes(600, {"k": 1024, "q": 3072}, ["k", "q"], 28, "bfloat16") == 600 * 28 * 4096 * 2


def test_save_tensors_is_a_reproducible_safetensors_file(tmp_path):
    """safetensors reads what save_tensors writes (every stored dtype, empty and 0-d tensors),
    and the same tensors and metadata give the same bytes whatever their insertion order."""
    tensors = {
        "b": torch.randn(3, 5).to(torch.bfloat16),
        "a": torch.randn(7).half(),
        "c": torch.arange(4),
        "d": torch.randn(2, 2),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(1.5),
        "mask": torch.tensor([True, False]),
    }
    save_tensors(tensors, tmp_path / "one.safetensors", {"z": "1", "a": "2"})
    save_tensors(dict(reversed(list(tensors.items()))), tmp_path / "two.safetensors", {"a": "2", "z": "1"})
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    loaded = load_file(str(tmp_path / "one.safetensors"))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    with safe_open(str(tmp_path / "one.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"a": "2", "z": "1"}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip"])
def test_hdf5_shards_are_chunked_by_token_rows_and_read_back_bit_identical(tmp_path, compression):
    """Each (site, layer) dataset is stored in chunks of whole token rows of about chunk_kb
    KiB, compressed as asked; bfloat16 is stored as its 16-bit words and read back exactly
    (every bit pattern of a random tensor, NaN-free)."""
    path = tmp_path / "s.h5"
    settings = Hdf5Settings(compression=compression, chunk_kb=1)
    header = _header(sites=("k",), layers=(0,))
    values = torch.randint(0, 0x7F80, (300, 64), dtype=torch.int16).view(torch.bfloat16)  # finite bfloat16 patterns
    write_shard(path, header, {("k", 0): values}, [1, 2, 3], [100, 100, 100], hdf5=settings)
    with h5py.File(path, "r") as handle:
        dataset = handle[hook_name("k", 0)]
        assert dataset.dtype == np.uint16 and dataset.attrs["dtype"] == "bfloat16"
        assert dataset.chunks == (8, 64)  # 1 KiB / (64 values x 2 bytes) = 8 rows
        assert dataset.compression == (None if compression == "none" else compression)
    read = Shard(path).read("k", 0)
    assert read.dtype == torch.bfloat16 and torch.equal(read.view(torch.int16), values.view(torch.int16))


def test_hdf5_shards_are_reproducible_and_refuse_non_numeric_datasets(tmp_path):
    """The same tensors give the same bytes (no modification times, sorted names); a dataset
    that h5py would decode into Python objects is refused with the file named."""
    torch.manual_seed(0)
    acts = _write(tmp_path / "one.h5")
    write_shard(tmp_path / "two.h5", _header(), dict(reversed(list(acts.items()))), [10, 11], [3, 5])
    assert (tmp_path / "one.h5").read_bytes() == (tmp_path / "two.h5").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
    with h5py.File(tmp_path / "one.h5", "r+") as handle:
        del handle["lengths"]
        handle.create_dataset("lengths", data=np.array(["3", "5"], dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(ShardError, match=r"one\.h5: cannot read its prompt index .*not a number type"):
        Shard(tmp_path / "one.h5")
