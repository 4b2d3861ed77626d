import numpy as np
import pytest

from minormech.tasks import TASKS, WeightTable, examples_for, get_task, make_weight_table, value_grid


@pytest.mark.parametrize("name", ["LR", "MD"])
def test_every_output_is_the_task_function(name):
    task = get_task(name)
    grid = value_grid(task)
    assert grid.shape == (529, 2) and grid.min() == 0 and grid.max() == 22
    for w in grid[::37]:
        x, y = examples_for(task, w)
        expected = [(xi * w).sum() if name == "LR" else np.abs(xi - w).sum() for xi in x]
        assert y.tolist() == [int(v) for v in expected]
        assert 0 <= y.min() and y.max() <= 1000


def test_known_values():
    assert get_task("LR").output(np.array([3, 4]), np.array([5, 6])) == 3 * 5 + 4 * 6
    assert get_task("MD").output(np.array([3, 10]), np.array([5, 6])) == 2 + 4


@pytest.mark.parametrize("name", ["LR", "MD"])
def test_split_sizes_and_determinism(name, tmp_path):
    task = get_task(name)
    table = make_weight_table(task, 40, seed=0)
    assert len(table.test_ids) == 40 and len(table.train_ids) == 489
    assert set(table.test_ids).isdisjoint(table.train_ids)
    again = make_weight_table(task, 40, seed=0)
    assert np.array_equal(table.is_test, again.is_test)
    assert not np.array_equal(table.is_test, make_weight_table(task, 40, seed=1).is_test)
    path = tmp_path / f"{name}.tsv"
    table.write_tsv(path)
    read = WeightTable.read_tsv(path, name)
    assert np.array_equal(read.weights, table.weights) and np.array_equal(read.is_test, table.is_test)
    assert path.read_text().splitlines()[0] == "weight_id\tw0\tw1\tsplit"


def test_registry_rejects_unknown_and_duplicate_names():
    with pytest.raises(KeyError, match="known tasks"):
        get_task("XOR")
    assert {"LR", "MD"} <= set(TASKS)
