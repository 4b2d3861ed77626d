"""Model-free controls and the interval code, on cases whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from minormech.controls import control_targets, least_squares_weight, prompt_examples
from minormech.prompts import generate_prompts
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
