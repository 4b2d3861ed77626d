"""The probe on synthetic activations whose answer is known."""

import numpy as np
import pytest
import torch

from minormech.probe_results import squared_errors
from minormech.probes import (
    ProbeData,
    ProbeGroup,
    ProbeTraining,
    StackedProbes,
    per_probe_mse,
    predict_stacks,
    train_probe_groups,
)
from minormech.prompts import Prompt, prompts_digest
from minormech.shards import Shard, ShardHeader, write_shard


def _synthetic(tmp_path, n_prompts, layers, d, seed, name, signal_layers):
    """Prompts with random lengths; in `signal_layers` every token carries w linearly
    (plus noise), elsewhere the activations are pure noise."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    mixing = torch.randn(2, d, generator=torch.Generator().manual_seed(99))
    prompts, acts = [], {("k", l): [] for l in layers}
    for i in range(n_prompts):
        w = rng.integers(0, 23, size=2)
        n = int(rng.integers(5, 12))
        prompts.append(
            Prompt(
                id=i,
                weight_id=int(w[0] * 23 + w[1]),
                weight=w.tolist(),
                n_examples=1,
                text="",
                answer="",
                input_ids=list(range(n)),
                answer_ids=[1],
            )
        )
        for l in layers:
            noise = torch.randn(n, d, generator=gen)
            signal = torch.tensor(w, dtype=torch.float32) @ mixing / 10 if l in signal_layers else 0
            acts[("k", l)].append(noise * 0.1 + signal)
    acts = {key: torch.cat(v).to(torch.float16) for key, v in acts.items()}
    path = tmp_path / f"{name}.safetensors"
    header = ShardHeader("m", "LR", name, 0, ("k",), tuple(layers), "float16", prompts_digest(prompts))
    write_shard(path, header, acts, [p.id for p in prompts], [p.length for p in prompts])
    return ProbeData([Shard(path)], prompts, "k", layers)


def test_probe_learns_a_linear_readout(tmp_path):
    layers = [0, 1]
    train = _synthetic(tmp_path, 400, layers, 16, 0, "train", signal_layers={1})
    test = _synthetic(tmp_path, 100, layers, 16, 1, "test", signal_layers={1})
    settings = ProbeTraining(
        regime="improved", d_proj=32, lr=3e-3, batch_size=16, max_epochs=150, patience=20, val_fraction=0.1, seed=0
    )
    stacks, (summary,) = train_probe_groups(train, [ProbeGroup("k")], settings, max_positions=12)
    (predictions,), index = predict_stacks(stacks, test, 64)
    mse = per_probe_mse(predictions, test.targets[index])[0]
    baseline = squared_errors(
        train.targets.float().mean(0).expand_as(test.targets), test.targets
    ).mean()  # the reports' training-mean baseline
    assert baseline > 30
    assert mse[1] < 0.5, mse  # w is in layer 1: near-zero error
    assert mse[0] > 0.8 * baseline  # layer 0 is noise: no better than the mean
    assert summary["regime"] == "improved" and summary["epochs"] >= 1


def test_stacked_training_equals_training_each_probe_alone(tmp_path):
    """Every (variant, layer) probe of a stack ends where it ends when trained alone."""
    layers = [0, 1, 2]
    data = _synthetic(tmp_path, 40, layers, 8, 0, "train", signal_layers={1, 2})
    settings = ProbeTraining(regime="paper", d_proj=8, lr=1e-3, batch_size=1, steps=60, seed=5)
    masks = (torch.rand(2, 3, 8, generator=torch.Generator().manual_seed(0)) < 0.6).float()
    (stacked,), _ = train_probe_groups(data, [ProbeGroup("k", masks)], settings, max_positions=12)
    for v in range(2):
        for i, layer in enumerate(layers):
            alone_data = ProbeData(data.shards, data.prompts, "k", [layer])
            (alone,), _ = train_probe_groups(
                alone_data, [ProbeGroup("k", masks[v : v + 1, i : i + 1], variant_ids=[v])], settings, max_positions=12
            )
            for p_alone, p_stacked in zip(alone.probes.parameters(), stacked.probes.parameters()):
                torch.testing.assert_close(p_alone[0, 0], p_stacked[v, i], rtol=1e-5, atol=1e-6)


def test_pooling_ignores_padding():
    probes = StackedProbes(1, 1, 4, 3, 2, 10, 0)
    with torch.no_grad():
        probes.position_logits.normal_()
    a = torch.randn(1, 1, 5, 4)
    padded = torch.cat([a, torch.randn(1, 1, 3, 4) * 100], dim=2)
    out_a = probes(a, torch.tensor([5]))
    out_padded = probes(padded, torch.tensor([5]))
    torch.testing.assert_close(out_a, out_padded)


def test_stale_shard_is_refused(tmp_path):
    data = _synthetic(tmp_path, 5, [0], 4, 0, "train", signal_layers=set())
    changed = [Prompt(**{**vars(p), "input_ids": p.input_ids[:-1] + [7]}) for p in data.prompts]
    with pytest.raises(ValueError, match="made from other prompts"):
        ProbeData(data.shards, changed, "k", [0])


def test_feature_masks_apply_at_read_time(tmp_path):
    """Variant 0 sees every feature, variant 1 none: only the first can learn, and the
    second's output is exactly zero (the mask multiplies the pooled features)."""
    layers = [0]
    train = _synthetic(tmp_path, 200, layers, 8, 0, "train", signal_layers={0})
    masks = torch.stack([torch.ones(1, 8), torch.zeros(1, 8)])
    settings = ProbeTraining(
        regime="improved", d_proj=16, lr=3e-3, batch_size=16, max_epochs=60, patience=10, val_fraction=0.1, seed=0
    )
    stacks, _ = train_probe_groups(train, [ProbeGroup("k", masks)], settings, max_positions=12)
    (predictions,), index = predict_stacks(stacks, train, 64)
    mse = per_probe_mse(predictions, train.targets[index])
    assert predictions[1].abs().max() == 0
    assert mse[0, 0] < 2 and mse[1, 0] > 50


def test_seeds_are_extra_variants_and_seed_zero_is_unchanged(tmp_path):
    """With probe.seeds = 3 the first seed of every variant ends exactly where the single-seed
    training ends (same init, batches and early stopping per probe); the others start
    elsewhere."""
    layers = [0, 1]
    data = _synthetic(tmp_path, 60, layers, 8, 0, "train", signal_layers={1})
    masks = (torch.rand(2, 2, 8, generator=torch.Generator().manual_seed(0)) < 0.6).float()
    one = ProbeTraining(
        regime="improved", d_proj=8, lr=3e-3, batch_size=8, max_epochs=5, patience=2, val_fraction=0.2, seed=4
    )
    three = ProbeTraining(**{**vars(one), "seeds": 3})
    (single,), _ = train_probe_groups(data, [ProbeGroup("k", masks)], one, max_positions=12)
    (seeded,), _ = train_probe_groups(data, [ProbeGroup("k", masks)], three, max_positions=12)
    assert seeded.probes.w_proj.shape[0] == 6
    for p_single, p_seeded in zip(single.probes.parameters(), seeded.probes.parameters()):
        torch.testing.assert_close(p_single, p_seeded[0::3])
    assert not torch.allclose(seeded.probes.w_out[0], seeded.probes.w_out[1])


def test_control_task_probes_learn_the_permuted_targets(tmp_path):
    """A control-task stack learns control_targets[weight id], not w: with a table that maps
    every weight id to (0, 0) its predictions go to zero while the task probe learns w."""
    layers = [0]
    train = _synthetic(tmp_path, 200, layers, 8, 0, "train", signal_layers={0})
    settings = ProbeTraining(
        regime="improved", d_proj=16, lr=3e-3, batch_size=16, max_epochs=40, patience=10, val_fraction=0.1, seed=0
    )
    zeros = torch.zeros(529, 2)
    stacks, _ = train_probe_groups(
        train, [ProbeGroup("k"), ProbeGroup("k", control_targets=zeros)], settings, max_positions=12
    )
    (task, control), index = predict_stacks(stacks, train, 64)
    assert per_probe_mse(task, train.targets[index])[0, 0] < 5
    assert per_probe_mse(control, zeros[: len(index)])[0, 0] < 1


def test_a_stack_that_follows_another_keeps_its_best_epochs(tmp_path):
    """A follower (the control task's early stopping) validates nothing: it trains the
    epochs its leader trains and keeps each probe's state at the leader's best epoch. With
    the same targets (a table that maps every weight id to its own w) and the same
    initial values it therefore ends exactly where the leader ends."""
    layers = [0, 1]
    train = _synthetic(tmp_path, 120, layers, 8, 0, "train", signal_layers={1})
    settings = ProbeTraining(
        regime="improved", d_proj=8, lr=3e-3, batch_size=16, max_epochs=12, patience=3, val_fraction=0.2, seed=0
    )
    own_w = torch.tensor([[a, b] for a in range(23) for b in range(23)], dtype=torch.float32)
    stacks, (led, followed) = train_probe_groups(
        train, [ProbeGroup("k"), ProbeGroup("k", control_targets=own_w, follows=0)], settings, max_positions=12
    )
    assert followed["best_epoch"] == led["best_epoch"] and followed["epochs"] == led["epochs"]
    assert "best_validation_mse" not in followed
    for leader, follower in zip(stacks[0].probes.parameters(), stacks[1].probes.parameters()):
        torch.testing.assert_close(leader, follower, rtol=0, atol=0)
