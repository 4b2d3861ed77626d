import json
import re
from dataclasses import asdict

import numpy as np
import pytest
from workflow_helpers import edit_first_prompt_weight, rewrite_first_prompt_weight

from minormech.prompts import (
    PROMPT_FORMAT,
    PROMPT_FORMAT_VERSION,
    PromptRecipe,
    format_example,
    generate_prompts,
    output_spans,
    prompt_weight_ids,
    prompts_digest,
    read_drawn_prompts,
    read_prompts,
    write_prompts,
)
from minormech.tasks import get_task, make_weight_table

CONTEXTS = {
    "LR": "The output represents the result of a linear regression given 2 dimensions with output range [0-1000]: ",
    "MD": "The output represents the Manhattan Distance to a point given 2 dimensions with output range [0-1000]: ",
}


def _make(tokenizer, name, max_tokens=120, n=12, seed=0):
    task = get_task(name)
    table = make_weight_table(task, 40, seed)
    ids = prompt_weight_ids("probe_train", table, seed, count=n)
    return task, table, generate_prompts(task, table, ids, "probe_train", tokenizer, max_tokens, seed)


@pytest.mark.parametrize("name", ["LR", "MD"])
def test_prompt_structure_budget_and_answer(smollm2_tokenizer, name):
    tok = smollm2_tokenizer
    task, table, prompts = _make(tok, name)
    for p in prompts:
        assert p.text.startswith(CONTEXTS[name] + "\n\n")
        assert p.text.endswith("\nOutput: ")
        examples = p.text[len(CONTEXTS[name]) + 2 :] + p.answer
        blocks = examples.split("\n\n")
        assert len(blocks) == p.n_examples
        w = np.array(p.weight)
        for block in blocks:  # every example, the query included, is consistent with w
            x0, x1, y = map(int, re.fullmatch(r"\nFeature 0: (\d+)\nFeature 1: (\d+)\nOutput: (\d+)", block).groups())
            assert y == task.output(np.array([x0, x1]), w)
        # Algorithm 1's budget: the example text fits (test_budget_is_tight: one more would not).
        assert len(tok(examples, add_special_tokens=False)["input_ids"]) <= 120
        # Answer ids are what follows the prompt when the answer is appended.
        assert tok(p.text + p.answer)["input_ids"] == p.input_ids + p.answer_ids
        assert tok.decode(p.answer_ids) == p.answer
        assert table.weights[p.weight_id].tolist() == p.weight
        assert not table.is_test[p.weight_id]


def test_budget_is_tight(smollm2_tokenizer):
    """Adding the prompt's own next example draw would exceed the budget (Algorithm 1 stops
    at the last prompt within it)."""
    tok = smollm2_tokenizer
    _, _, small = _make(tok, "LR", max_tokens=60, n=6)
    _, _, large = _make(tok, "LR", max_tokens=300, n=6)
    for a, b in zip(small, large):
        # Same per-prompt draws: the short prompt's examples are a prefix of the long one's.
        body_a = a.text[len(CONTEXTS["LR"]) + 2 :] + a.answer
        body_b = b.text[len(CONTEXTS["LR"]) + 2 :] + b.answer
        assert body_b.startswith(body_a)
        assert b.n_examples > a.n_examples
        next_example = body_b.split("\n\n")[: a.n_examples + 1]
        assert len(tok("\n\n".join(next_example), add_special_tokens=False)["input_ids"]) > 60


def test_determinism_and_round_trip(smollm2_tokenizer, tmp_path):
    _, _, first = _make(smollm2_tokenizer, "MD", seed=3)
    _, _, second = _make(smollm2_tokenizer, "MD", seed=3)
    _, _, other = _make(smollm2_tokenizer, "MD", seed=4)
    assert first == second
    assert prompts_digest(first) == prompts_digest(second) != prompts_digest(other)
    path = tmp_path / "p.jsonl"
    write_prompts(path, first, PromptRecipe(3, 120, 12))
    assert read_prompts(path) == read_prompts(path, PromptRecipe(3, 120, 12)) == first


def test_test_set_uses_each_test_weight_equally():
    table = make_weight_table(get_task("LR"), 40, 0)
    ids = prompt_weight_ids("probe_test", table, 0, 4000)
    assert len(ids) == 4000
    assert set(ids) == set(table.test_ids)
    assert np.all(np.bincount(ids)[table.test_ids] == 100)


def test_budget_too_small_is_a_clear_error(smollm2_tokenizer):
    with pytest.raises(ValueError, match="max_prompt_tokens=5 cannot hold one example"):
        _make(smollm2_tokenizer, "LR", max_tokens=5, n=1)


def test_damaged_prompt_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"format": PROMPT_FORMAT, "version": PROMPT_FORMAT_VERSION}) + '\n{"id": 0}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not a prompt record"):
        read_prompts(path)
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(tmp_path / "missing.jsonl")
    path.write_text("")
    with pytest.raises(ValueError, match=r"bad\.jsonl: prompt file is empty; delete it and rerun$"):
        read_prompts(path)


def test_prompt_file_of_an_old_format_is_refused(smollm2_tokenizer, tmp_path):
    """A file written before prompts stored their examples (no header: the first line is a
    prompt) and one of another version are refused with one line naming the file."""
    _, _, prompts = _make(smollm2_tokenizer, "LR", n=2)
    old = tmp_path / "old.jsonl"
    old.write_text(
        "".join(
            json.dumps({k: v for k, v in asdict(p).items() if k not in ("example_x", "example_y")}) + "\n"
            for p in prompts
        )
    )
    with pytest.raises(
        ValueError,
        match=r"^\S*old\.jsonl: prompt file of an old format "
        r"\(no format header, prompts without their examples\); delete it and rerun$",
    ):
        read_prompts(old)
    other = tmp_path / "other.jsonl"
    write_prompts(other, prompts, PromptRecipe(0, 120, 2))
    lines = other.read_text().splitlines(keepends=True)
    other.write_text(
        json.dumps({"format": PROMPT_FORMAT, "version": PROMPT_FORMAT_VERSION + 1}) + "\n" + "".join(lines[1:])
    )
    with pytest.raises(
        ValueError,
        match=rf"other\.jsonl: prompt format {PROMPT_FORMAT_VERSION + 1}, expected {PROMPT_FORMAT_VERSION}; "
        r"delete it and rerun$",
    ):
        read_prompts(other)


@pytest.mark.parametrize("name", ["LR", "MD"])
def test_prompts_store_their_examples(smollm2_tokenizer, name):
    """The stored examples are the ones the text shows, in order, the query last with the
    answer as its output; output_spans finds every output value in text + answer."""
    task, _, prompts = _make(smollm2_tokenizer, name)
    for p in prompts:
        assert len(p.example_x) == len(p.example_y) == p.n_examples
        body = "\n\n".join(format_example(x, y) for x, y in zip(p.example_x, p.example_y))
        assert p.text + p.answer == CONTEXTS[name] + "\n\n" + body
        assert str(p.example_y[-1]) == p.answer
        np.testing.assert_array_equal(task.output(np.array(p.example_x), np.array(p.weight)), p.example_y)
        full = p.text + p.answer
        assert [full[a:b] for a, b in p.output_spans()] == [str(y) for y in p.example_y]
        assert output_spans(p.example_x, p.example_y, len(CONTEXTS[name]) + 2) == p.output_spans()


def test_attribution_prompts_draw_from_all_weights():
    table = make_weight_table(get_task("MD"), 40, 0)
    ids = prompt_weight_ids("attribution", table, 0, 2000)
    assert len(ids) == 2000 and set(ids) & set(table.test_ids) and set(ids) & set(table.train_ids)
    assert np.array_equal(ids, prompt_weight_ids("attribution", table, 0, 2000))


#: The recipe of _make(tokenizer, "LR", n=3).
RECIPE = PromptRecipe(seed=0, max_prompt_tokens=120, count=3)


def test_a_prompt_file_edited_by_hand_is_refused_whatever_its_timestamp(smollm2_tokenizer, tmp_path):
    """One prompt's weight changed, the record still valid and the file's old timestamp
    restored: Snakemake sees nothing, so the reader must; the header's checksum of the
    records tells. The file as written reads back."""
    _, _, prompts = _make(smollm2_tokenizer, "LR", n=3)
    path = tmp_path / "p.jsonl"
    write_prompts(path, prompts, RECIPE)
    assert read_prompts(path, RECIPE) == prompts
    edit_first_prompt_weight(path)
    with pytest.raises(ValueError) as error:
        read_prompts(path, RECIPE)
    assert str(error.value) == (
        f"{path}: its prompts do not match the checksum in its header (the file was edited after it was "
        "written); delete it and rerun, which makes it again from the config and seed"
    )


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        (PromptRecipe(1, 120, 3), "made with seed 0, but the config asks for seed 1"),
        (PromptRecipe(0, 60, 3), "made with max_prompt_tokens 120, but the config asks for max_prompt_tokens 60"),
        (
            PromptRecipe(5, 60, 3),
            "made with seed 0, max_prompt_tokens 120, but the config asks for seed 5, max_prompt_tokens 60",
        ),
        (
            PromptRecipe(0, 120, 3, train_count=96),
            "made with train_count None, but the config asks for train_count 96",
        ),
    ],
    ids=["seed", "token budget", "both", "probe-training count of control prompts"],
)
def test_a_prompt_file_of_another_config_is_refused(smollm2_tokenizer, tmp_path, asked, message):
    """A valid, unedited file made with another seed, token budget or (control-task
    prompts) probe-training count (copied from another run, say) is refused by a reader
    given the config's recipe, with one line naming the file and each setting that differs."""
    _, _, prompts = _make(smollm2_tokenizer, "LR", n=3)
    path = tmp_path / "p.jsonl"
    write_prompts(path, prompts, RECIPE)
    with pytest.raises(ValueError) as error:
        read_prompts(path, asked)
    assert str(error.value) == (f"{path}: {message}; the file comes from another run or config: delete it and rerun")


def test_a_prompt_file_cut_at_a_line_boundary_is_refused_by_its_count(smollm2_tokenizer, tmp_path):
    _, _, prompts = _make(smollm2_tokenizer, "LR", n=3)
    path = tmp_path / "p.jsonl"
    write_prompts(path, prompts, RECIPE)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError) as error:
        read_prompts(path, RECIPE)
    assert str(error.value) == (
        f"{path}: 2 prompts but the config asks for 3; the file is incomplete or stale: delete it and rerun"
    )


def test_a_prompt_file_whose_weights_are_not_the_drawn_ones_is_refused(smollm2_tokenizer, tmp_path):
    """A file whose records and checksum were both rewritten (the first prompt's weight
    changed, its timestamp kept) passes every check of its own; a job that trains on the
    weights compares them with what the seed draws from the weight table."""
    _, table, prompts = _make(smollm2_tokenizer, "LR", n=3)
    path = tmp_path / "p.jsonl"
    write_prompts(path, prompts, RECIPE)
    assert read_drawn_prompts(path, RECIPE, table, "probe_train") == prompts
    rewrite_first_prompt_weight(path)
    read_prompts(path, RECIPE)  # valid by its own checks
    with pytest.raises(ValueError) as error:
        read_drawn_prompts(path, RECIPE, table, "probe_train")
    first, w = prompts[0].weight_id, prompts[0].weight
    assert str(error.value) == (
        f"{path}:2: prompt 0 has weight id {first}, w = {[w[0] + 1, *w[1:]]}, but the config and seed draw weight "
        f"id {first}, w = {w}, from the dataset; the file was edited or comes from another dataset: delete it and rerun"
    )
    write_prompts(path, prompts, RECIPE)
    with pytest.raises(ValueError, match=r"\.jsonl:\d: prompt \d has weight id"):
        read_drawn_prompts(path, RECIPE, table, "attribution")  # a valid file of another prompt set
