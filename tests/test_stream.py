"""Stream mode (minormech.stream) against shard mode on the real embedded model: the same
probes, seeds and batch order must give the same test MSE per (site, layer, variant); and
HDF5 shards against safetensors shards: identical batches and probes."""

import numpy as np
import pytest
import torch

from minormech.activations import Recording, extract_activations, pad_token_id
from minormech.probes import (
    ProbeData,
    ProbeGroup,
    ProbeTraining,
    batch_order,
    per_probe_mse,
    predict_stacks,
    train_probe_groups,
)
from minormech.prompts import generate_prompts, prompt_weight_ids, prompts_digest
from minormech.ridge_probes import PoolingTap
from minormech.runner import RunOptions
from minormech.shards import Shard, ShardHeader, chunk_rows, write_shard
from minormech.stream import StreamSource
from minormech.tasks import get_task, make_weight_table

SITES, LAYERS = ["k", "v"], list(range(30))
#: Largest relative difference of a test MSE allowed between the sources (CPU, float32
#: activations in both). Measured: 0.0 for both regimes (the forwards and batches are the
#: same computations); the bound leaves room for BLAS kernels that depend on batch shape.
TOLERANCE = 1e-5


def _prompts(tokenizer, prompt_set, n):
    task = get_task("LR")
    table = make_weight_table(task, 8, 0)
    return generate_prompts(task, table, prompt_weight_ids(prompt_set, table, 0, n), prompt_set, tokenizer, 60, 0)


def _shards(model, tokenizer, prompts, prompt_set, n_chunks, directory):
    """{suffix: the chunks' shards} in both formats, written from the same activations."""
    shards = {".safetensors": [], ".h5": []}
    for c, rows in enumerate(chunk_rows(len(prompts), n_chunks)):
        part = [prompts[i] for i in rows]
        activations = extract_activations(
            model, part, Recording(SITES, LAYERS, torch.float32), RunOptions(8, pad_token_id(tokenizer))
        )
        header = ShardHeader(
            "smollm2-135m", "LR", prompt_set, c, tuple(SITES), tuple(LAYERS), "float32", prompts_digest(part)
        )
        for suffix, written in shards.items():
            path = directory / f"{prompt_set}{c}{suffix}"
            write_shard(path, header, activations, [p.id for p in part], [p.length for p in part])
            written.append(Shard(path))
    return shards


@pytest.fixture(scope="module")
def sets(smollm2, tmp_path_factory):
    """48 training prompts in 2 chunks and 16 test prompts, as shards (float32; safetensors
    and HDF5) and as stream sources over the same prompts."""
    model, tokenizer = smollm2
    directory = tmp_path_factory.mktemp("stream")
    train, test = _prompts(tokenizer, "probe_train", 48), _prompts(tokenizer, "probe_test", 16)
    train_shards = _shards(model, tokenizer, train, "probe_train", 2, directory)
    test_shards = _shards(model, tokenizer, test, "probe_test", 1, directory)
    shards = {"train": train_shards[".safetensors"], "test": test_shards[".safetensors"]}
    hdf5 = {"train": train_shards[".h5"], "test": test_shards[".h5"]}
    widths = {"k": 192, "v": 192}

    def stream(prompts, n_chunks):
        return StreamSource(
            model,
            prompts,
            SITES,
            LAYERS,
            widths,
            8,
            pad_token_id(tokenizer),
            [len(c) for c in chunk_rows(len(prompts), n_chunks)],
        )

    masks = (torch.rand(4, len(LAYERS), 192, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    return {"train": train, "test": test, "shards": shards, "hdf5": hdf5, "stream": stream, "masks": masks}


SETTINGS = {
    "paper": ProbeTraining(regime="paper", d_proj=32, lr=1e-3, batch_size=1, steps=60, seed=0),
    "improved": ProbeTraining(
        regime="improved", d_proj=32, lr=1e-3, batch_size=8, max_epochs=3, patience=2, val_fraction=0.2, seed=0
    ),
}


@pytest.mark.parametrize("regime", ["paper", "improved"])
def test_stream_and_shards_give_the_same_test_mse(sets, regime):
    settings = SETTINGS[regime]
    max_positions = max(p.length for p in [*sets["train"], *sets["test"]])
    variants = [None, sets["masks"]]  # unfiltered and four filtered variants, per site
    shard_mse = {}
    for site in SITES:  # shard mode: one job per (site, kind)
        train = ProbeData(sets["shards"]["train"], sets["train"], site, LAYERS)
        test = ProbeData(sets["shards"]["test"], sets["test"], site, LAYERS)
        for kind, masks in enumerate(variants):
            stacks, _ = train_probe_groups(train, [ProbeGroup(site, masks)], settings, max_positions)
            (predictions,), index = predict_stacks(stacks, test, 64)
            shard_mse[(site, kind)] = per_probe_mse(predictions, test.targets[index])

    train, test = sets["stream"](sets["train"], 2), sets["stream"](sets["test"], 1)
    plan = [(site, kind) for site in SITES for kind in range(len(variants))]
    stacks, summaries = train_probe_groups(
        train, [ProbeGroup(site, variants[kind]) for site, kind in plan], settings, max_positions, eval_batch_size=8
    )
    predictions, index = predict_stacks(stacks, test, 8)
    for (site, kind), prediction in zip(plan, predictions):
        stream_mse = per_probe_mse(prediction, test.targets[index])
        assert stream_mse.shape == shard_mse[(site, kind)].shape == (1 if kind == 0 else 4, len(LAYERS))
        relative = ((stream_mse - shard_mse[(site, kind)]).abs() / shard_mse[(site, kind)]).max().item()
        assert relative <= TOLERANCE, f"{site} kind {kind}: relative difference {relative:.2e}"
    assert test.forward_prompts == len(sets["test"])
    if regime == "paper":  # one forward per step of one prompt, however many probes learn from it
        assert train.forward_prompts == settings.steps
    else:  # each epoch: the training prompts minus validation, then the validation prompts
        assert train.forward_prompts == summaries[0]["epochs"] * len(sets["train"])


def test_stream_batches_equal_shard_batches(sets):
    """The activations a probe sees are the same from both sources, batch by batch, for a
    shuffled order with batches larger and smaller than a forward batch (up to the
    rounding of forwards over other batch shapes, as in tests/test_activations.py), and so
    are the pooled vectors the ridge readouts take from them."""
    train_shards = PoolingTap(ProbeData(sets["shards"]["train"], sets["train"], "k", LAYERS), ["k"]).record(None)
    stream = PoolingTap(sets["stream"](sets["train"], 2), ["k"]).record(None)
    for batch_size in (1, 12):
        order = list(batch_order(train_shards.chunk_sizes, batch_size, rng=np.random.default_rng(3)))
        for from_shards, from_stream in zip(train_shards.read(order), stream.read(order), strict=True):
            assert torch.equal(from_shards.prompt_index, from_stream.prompt_index)
            assert torch.equal(from_shards.lengths, from_stream.lengths)
            torch.testing.assert_close(
                from_stream.activations("k"), from_shards.activations("k"), rtol=1e-4, atol=1e-4
            )  # forwards of other batch shapes: rounding only
    # the ridge readouts' pooled vectors, taken from those batches, agree the same way
    for key, kept in train_shards.kept.items():
        torch.testing.assert_close(stream.kept[key], kept, rtol=1e-4, atol=1e-4)


def test_batch_order_keeps_batches_inside_chunks_and_covers_every_prompt():
    chunk_sizes = [5, 7, 4]
    starts = np.cumsum([0, *chunk_sizes])
    select = np.ones(16, dtype=bool)
    select[[2, 9]] = False
    batches = list(batch_order(chunk_sizes, 3, select=select, rng=np.random.default_rng(0)))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == [i for i in range(16) if select[i]]
    for rows in batches:
        assert len(set(np.searchsorted(starts, rows, side="right"))) == 1  # one chunk per batch


def test_hdf5_shards_give_the_batches_and_probes_of_safetensors_shards(sets):
    """The shard format changes nothing downstream: the same batches, bit for bit, and
    probes trained from them with the same test MSE, exactly."""
    settings = SETTINGS["improved"]
    max_positions = max(p.length for p in [*sets["train"], *sets["test"]])
    mse = {}
    for source in ("shards", "hdf5"):
        train = ProbeData(sets[source]["train"], sets["train"], "k", LAYERS)
        test = ProbeData(sets[source]["test"], sets["test"], "k", LAYERS)
        order = list(batch_order(train.chunk_sizes, 12, rng=np.random.default_rng(3)))
        mse[source, "batches"] = [batch.activations("k") for batch in train.read(order)]
        stacks, _ = train_probe_groups(train, [ProbeGroup("k", None)], settings, max_positions)
        (predictions,), index = predict_stacks(stacks, test, 64)
        mse[source] = per_probe_mse(predictions, test.targets[index])
    for from_safetensors, from_hdf5 in zip(mse["shards", "batches"], mse["hdf5", "batches"], strict=True):
        assert torch.equal(from_safetensors, from_hdf5)
    assert torch.equal(mse["shards"], mse["hdf5"])
