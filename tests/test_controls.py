"""Model-free controls and the interval code, on cases whose answer is known."""

import numpy as np
import pandas as pd
import pytest
import torch

from minormech.controls import control_targets, least_squares_weight, prompt_examples
from minormech.probe_job import JobRun, ProbeEntry, ProbeJob, ProbeSources, ReportSettings, run_probe_job
from minormech.probe_results import ProbeOutputs, ProbeVariants
from minormech.probes import ProbeData, ProbeTraining
from minormech.prompts import Prompt, generate_prompts, prompts_digest
from minormech.shards import Shard, ShardHeader, write_shard
from minormech.summary import ProbeErrors, probe_summary
from minormech.tasks import get_task, make_weight_table
from minormech.uncertainty import Bootstrap, bootstrap_interval


@pytest.fixture(scope="module")
def lr_prompts(smollm2_tokenizer):
    task = get_task("LR")
    table = make_weight_table(task, 40, 0)
    return task, generate_prompts(task, table, range(0, 529, 7), "probe_test", smollm2_tokenizer, 128, 0)


def test_least_squares_ceiling_recovers_lr_weights_exactly(lr_prompts):
    """Every real LR prompt with two independent examples gives back its w exactly."""
    task, prompts = lr_prompts
    checked = 0
    for prompt in prompts:
        x, y = prompt_examples(prompt)
        assert len(y) == prompt.n_examples - 1  # every complete example, not the query
        np.testing.assert_array_equal(task.output(x, np.array(prompt.weight)), y)
        if np.linalg.matrix_rank(x) == 2:
            np.testing.assert_allclose(least_squares_weight(task, x, y), prompt.weight, atol=1e-9)
            checked += 1
    assert checked >= 0.9 * len(prompts)


def test_md_ceiling_is_the_best_fitting_grid_weight(smollm2_tokenizer):
    """For MD the true w fits the examples exactly, so the estimate is the mean of the grid
    weights that fit exactly; with enough examples that is w itself."""
    task = get_task("MD")
    table = make_weight_table(task, 40, 0)
    prompts = generate_prompts(task, table, range(3, 529, 29), "probe_test", smollm2_tokenizer, 256, 0)
    exact = 0
    for prompt in prompts:
        x, y = prompt_examples(prompt)
        estimate = least_squares_weight(task, x, y)
        fits = [w for w in table.weights if (task.output(x, w) == y).all()]
        assert any((w == prompt.weight).all() for w in fits)
        np.testing.assert_allclose(estimate, np.mean(fits, axis=0))
        exact += np.allclose(estimate, prompt.weight)
    assert exact >= len(prompts) // 2


def test_control_targets_are_a_bijection_of_the_weights():
    table = make_weight_table(get_task("LR"), 40, 0)
    targets = control_targets(table.weights, 0, "LR")
    assert len({tuple(t) for t in targets}) == len(table.weights) == 529
    assert sorted(map(tuple, targets)) == sorted(map(tuple, table.weights))
    assert (targets != table.weights).any(1).mean() > 0.99  # almost no weight keeps its own target
    np.testing.assert_array_equal(targets, control_targets(table.weights, 0, "LR"))  # fixed for a seed
    assert (control_targets(table.weights, 0, "MD") != targets).any()


def test_bootstrap_interval_on_known_cases():
    # Two items 0 and 1: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    two = bootstrap_interval(np.array([0.0, 1.0]), n_boot=20000, level=0.95)
    assert (two.mean, two.low, two.high) == (0.5, 0.0, 1.0)
    middle = bootstrap_interval(np.array([0.0, 1.0]), n_boot=20000, level=0.4)
    assert middle.low == middle.high == 0.5
    # Constant values: no spread, whatever the grouping and seeds.
    constant = bootstrap_interval(np.full((3, 4, 10), 2.5), np.repeat(np.arange(5), 2), seed_axis=True)
    np.testing.assert_array_equal(constant.low, np.full(4, 2.5))
    np.testing.assert_array_equal(constant.high, np.full(4, 2.5))
    # Many independent normal items: the 95% interval is mean +- 1.96 sigma / sqrt(n).
    values = np.random.default_rng(0).normal(3.0, 2.0, size=2500)
    normal = bootstrap_interval(values, n_boot=4000)
    half_width = 1.96 * values.std() / np.sqrt(len(values))
    assert normal.high - normal.low == pytest.approx(2 * half_width, rel=0.08)
    assert normal.low < values.mean() < normal.high


def test_bootstrap_resamples_groups_not_items():
    """Items of one group move together: two groups of 50 identical items behave like two
    items, not like 100."""
    values = np.repeat([0.0, 1.0], 50)
    grouped = bootstrap_interval(values, np.repeat([0, 1], 50), n_boot=20000)
    assert (grouped.low, grouped.high) == (0.0, 1.0)
    ungrouped = bootstrap_interval(values, n_boot=20000)
    assert ungrouped.high - ungrouped.low < 0.3


def _errors(values: np.ndarray, baseline: np.ndarray, groups: np.ndarray) -> ProbeErrors:
    return ProbeErrors(values[:, None], groups, ["unfiltered"], baseline, np.arange(values.shape[-1]))


def test_summary_comparisons_are_paired_and_random_init_needs_the_baseline_beaten():
    """A probe that is better than the baseline by 1 on every test prompt, where the
    prompts' own errors vary by tens: the paired interval of (probe - baseline) excludes
    zero although the probe's own interval covers the baseline's mean, so the layer is
    listed. A layer that beats the random-init probe but not the baseline is never listed
    as below random-init."""
    rng = np.random.default_rng(0)
    n, groups = 40, np.arange(40)
    baseline = rng.uniform(10, 90, n)
    probe = np.stack([np.stack([baseline - 1.0, baseline + 5.0])] * 2)  # [S=2, L=2, N]: layer 0 better, 1 worse
    control = np.stack([np.stack([baseline + 3.0, baseline + 9.0])] * 2)  # random-init worse than both layers
    table = pd.DataFrame(
        {"layer": [0, 1], "test_mse": probe.mean((0, 2)), "test_mse_ci_low": [0.0, 0.0], "test_mse_ci_high": [99.0] * 2}
    )
    bootstrap = Bootstrap(n_boot=500)
    own = bootstrap(probe[:, 0][:, None], groups, seed_axis=True)
    assert own.low[0] < baseline.mean() < own.high[0]  # an unpaired reading would list nothing
    out = probe_summary(table, _errors(probe, baseline, groups), bootstrap, (table, _errors(control, baseline, groups)))
    assert out["layers_below_baseline"] == [0]
    assert out["probe_minus_baseline"][0]["high"] < 0 < out["probe_minus_baseline"][1]["low"]
    assert out["probe_minus_random_init"][1]["high"] < 0  # layer 1 beats random-init ...
    assert out["layers_below_random_init"] == [0]  # ... but not the baseline, so only layer 0


def _coded_source(tmp_path, name, weight_ids, table, seed):
    """Shards of three layers for prompts of these weights: layer 0 carries a random code
    of the prompt's weight identity (nothing linear in w), layer 1 carries w linearly, layer
    2 a random code of the prompt itself; every token the same vector plus noise."""
    rng = np.random.default_rng(seed)
    codes = torch.randn(len(table.weights), 64, generator=torch.Generator().manual_seed(1))
    mixing = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    prompts, acts = [], {("k", l): [] for l in range(3)}
    for i, wid in enumerate(weight_ids):
        w = table.weights[wid]
        n = int(rng.integers(5, 10))
        prompts.append(Prompt(i, int(wid), [int(v) for v in w], 1, "", "", list(range(n)), [1]))
        noise = lambda: 0.1 * torch.as_tensor(rng.normal(size=(n, 64)), dtype=torch.float32)  # noqa: E731
        acts[("k", 0)].append(codes[wid] + noise())
        acts[("k", 1)].append(torch.as_tensor(w, dtype=torch.float32) @ mixing / 10 + noise())
        acts[("k", 2)].append(torch.as_tensor(rng.normal(size=64), dtype=torch.float32) + noise())
    path = tmp_path / f"{name}.safetensors"
    header = ShardHeader("m", "LR", name, 0, ("k",), (0, 1, 2), "float32", prompts_digest(prompts))
    write_shard(
        path, header, {k: torch.cat(v) for k, v in acts.items()}, [p.id for p in prompts], [p.length for p in prompts]
    )
    return ProbeData([Shard(path)], prompts, "k", [0, 1, 2])


def test_control_task_can_fail_and_can_find_a_linear_w(tmp_path):
    """The control task separates reading w from remembering which weight a prompt has.
    Both probes are scored on new prompts of the 30 training weights. Where the
    activations only name the weight (layer 0), the task probe and the control probe
    remember their targets equally well: selectivity near zero, not selective. Where they
    name only the prompt (layer 2), neither learns anything: near zero. Where w is linear
    in the activations (layer 1), the task probe reads it and the control probe cannot
    turn w into pi(w): clearly selective."""
    table = make_weight_table(get_task("LR"), 40, 0)
    rng = np.random.default_rng(0)
    seen = rng.choice(table.train_ids, size=30, replace=False)
    sources = ProbeSources(
        _coded_source(tmp_path, "probe_train", np.repeat(seen, 10), table, 1),
        _coded_source(tmp_path, "probe_test", table.test_ids, table, 2),
        _coded_source(tmp_path, "probe_control", rng.choice(seen, size=90), table, 3),
    )
    settings = ProbeTraining(
        regime="improved", d_proj=16, lr=3e-3, batch_size=16, max_epochs=60, patience=10, val_fraction=0.1, seed=0
    )
    report = ReportSettings(False, True, {"n_boot": 500, "level": 0.95, "seed": 0}, 0)
    job = ProbeJob("m", "LR", [0, 1, 2], table, settings, report)
    outputs = ProbeOutputs(tmp_path / "table.csv", tmp_path / "predictions.safetensors", tmp_path / "summary.json")
    entry = ProbeEntry("k", "unfiltered", ProbeVariants.of_kind("unfiltered", "k", [0, 1, 2], None), outputs, {})
    run_probe_job(job, [entry], sources, torch.device("cpu"), JobRun(10, 64, 64, lambda it, n: it, dict))
    rows = pd.read_csv(outputs.table).set_index("layer")
    assert (rows["n_control"] < 90).all() and (rows["n_control"] > 60).all()  # validation weights left out
    weight_code, linear, prompt_code = rows.loc[0], rows.loc[1], rows.loc[2]
    assert weight_code["seen_task_gain"] > 0.8 * weight_code["control_baseline_mse"]  # both remember...
    assert weight_code["control_gain"] > 0.8 * weight_code["control_baseline_mse"]
    assert abs(weight_code["selectivity"]) < 0.15 * weight_code["control_baseline_mse"]  # ...so not selective
    assert weight_code["selectivity_ci_low"] < 0 < weight_code["selectivity_ci_high"]
    assert prompt_code["seen_task_gain_ci_high"] < 5 and prompt_code["control_gain_ci_high"] < 5  # neither gains
    assert prompt_code["selectivity_ci_low"] < 0 < prompt_code["selectivity_ci_high"]
    assert linear["seen_task_gain"] > 0.9 * linear["baseline_mse"]
    assert linear["control_gain"] < 0.3 * linear["control_baseline_mse"]
    assert linear["selectivity_ci_low"] > 0.5 * linear["baseline_mse"]
