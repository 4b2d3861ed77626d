"""Results record the prompt files they were computed from, and readers refuse a result
whose prompt file holds other prompts now (minormech.provenance)."""

import json
import os

import pytest
import torch
from workflow_helpers import rewrite_first_prompt_weight

from minormech import verify
from minormech.prompts import Prompt, PromptRecipe, write_prompts
from minormech.provenance import (
    PROMPTS_KEY,
    StaleResultError,
    check_current,
    check_summary,
    merged,
    prompt_digests,
    to_text,
)
from minormech.shards import load_current_tensors, load_tensors, recorded_prompts, save_tensors

RECIPE = PromptRecipe(seed=0, max_prompt_tokens=60, count=2)


def prompts(offset: int = 0) -> list[Prompt]:
    return [
        Prompt(i, i, [i + offset, 2], 1, f"text {i}", "7", [1, 2 + i], [7], [[1, 2]], [7]) for i in range(RECIPE.count)
    ]


@pytest.fixture
def in_workdir(tmp_path):
    """A working directory holding one prompt file, as jobs see it (relative paths)."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    os.makedirs("prompts")
    write_prompts("prompts/LR.jsonl", prompts(), RECIPE)
    yield tmp_path
    os.chdir(cwd)


def test_a_result_of_the_prompt_file_on_disk_reads(in_workdir):
    record = prompt_digests(["prompts/LR.jsonl"])
    save_tensors({"x": torch.ones(2)}, "map.safetensors", metadata={PROMPTS_KEY: to_text(record)})
    assert recorded_prompts("map.safetensors") == record
    assert load_current_tensors("map.safetensors", ["x"])["x"].tolist() == [1.0, 1.0]


def test_a_result_of_other_prompts_than_its_prompt_file_holds_now_is_refused(in_workdir):
    """The prompt file replaced by a valid one of the same recipe under its old timestamp:
    the result still reads as a file (load_tensors), but a job's reader refuses it."""
    record = prompt_digests(["prompts/LR.jsonl"])
    save_tensors({"x": torch.ones(2)}, "map.safetensors", metadata={PROMPTS_KEY: to_text(record)})
    rewrite_first_prompt_weight(in_workdir / "prompts/LR.jsonl")
    load_tensors("map.safetensors")
    with pytest.raises(StaleResultError) as error:
        load_current_tensors("map.safetensors")
    assert str(error.value) == (
        "map.safetensors: computed from other prompts than prompts/LR.jsonl holds now (the prompt file was "
        "remade or replaced after the result was written); touch prompts/LR.jsonl and rerun snakemake, which "
        "remakes everything computed from it"
    )


def test_a_result_whose_prompt_file_is_gone_is_refused(in_workdir):
    record = prompt_digests(["prompts/LR.jsonl"])
    os.remove("prompts/LR.jsonl")
    with pytest.raises(StaleResultError, match=r"^table\.json: computed from prompts/LR\.jsonl, which no longer"):
        check_current("table.json", record)


def test_a_summary_records_its_prompts_and_one_without_is_refused(in_workdir):
    with open("table.json", "w") as handle:
        json.dump({PROMPTS_KEY: prompt_digests(["prompts/LR.jsonl"])}, handle)
    check_summary("table.json")
    with open("old.json", "w") as handle:
        json.dump({"settings": {}}, handle)
    with pytest.raises(StaleResultError, match=r"^old\.json: records no prompt files it was computed from"):
        check_summary("old.json")


def test_merged_records_are_the_union_and_refuse_two_versions_of_one_file(in_workdir):
    first = prompt_digests(["prompts/LR.jsonl"])
    write_prompts("prompts/MD.jsonl", prompts(offset=5), RECIPE)
    second = prompt_digests(["prompts/MD.jsonl"])
    assert merged(first, second) == {**first, **second}
    assert list(merged(second, first)) == ["prompts/LR.jsonl", "prompts/MD.jsonl"]
    with pytest.raises(StaleResultError, match=r"^prompts/LR\.jsonl: the results read here were computed from"):
        merged(first, {"prompts/LR.jsonl": second["prompts/MD.jsonl"]})


def test_verify_finds_every_result_of_other_prompts_and_skips_files_it_cannot_check(in_workdir, capsys):
    """`python -m minormech.verify results/` after a prompt file was put back with an old
    timestamp: Snakemake sees nothing to do, verify names each result made from the other
    prompts. Weights and manifests (no record, no shard header) are not counted."""
    os.makedirs("results/model")
    record = {PROMPTS_KEY: to_text(prompt_digests(["prompts/LR.jsonl"]))}
    save_tensors({"x": torch.ones(2)}, "results/map.safetensors", metadata=record)
    with open("results/table.json", "w") as handle:
        json.dump({PROMPTS_KEY: prompt_digests(["prompts/LR.jsonl"])}, handle)
    save_tensors({"w": torch.ones(2)}, "results/model/model.safetensors", metadata={"format": "pt"})
    with open("results/model/manifest.json", "w") as handle:
        json.dump({"id": "m"}, handle)
    assert verify.main(["results"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 of 2 files intact"
    rewrite_first_prompt_weight(in_workdir / "prompts/LR.jsonl")
    assert verify.main(["results"]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: results/{name}: computed from other prompts than prompts/LR.jsonl holds now (the prompt file "
        "was remade or replaced after the result was written); touch prompts/LR.jsonl and rerun snakemake, which "
        "remakes everything computed from it"
        for name in ("map.safetensors", "table.json")
    ]


def test_a_result_that_records_no_prompt_files_is_refused(in_workdir):
    """A map, xi or predictions file written before results recorded their prompt files
    cannot be checked, so it is refused rather than passed."""
    save_tensors({"x": torch.ones(2)}, "old.safetensors", metadata={"pair": "LR-MD"})
    with pytest.raises(StaleResultError) as error:
        load_current_tensors("old.safetensors")
    assert str(error.value) == (
        "old.safetensors: records no prompt files it was computed from (written by an older version); "
        "delete it and rerun"
    )


def test_a_prompt_file_edited_under_its_intact_header_fails_the_check_of_its_results(in_workdir):
    """The reader of a result opens the prompt file only through its header: the records are
    hashed against it there too, so an edit that keeps the header is refused."""
    record = prompt_digests(["prompts/LR.jsonl"])
    lines = open("prompts/LR.jsonl").read().splitlines(keepends=True)
    lines[1] = lines[1].replace('"weight": [0, 2]', '"weight": [9, 2]')
    open("prompts/LR.jsonl", "w").writelines(lines)
    with pytest.raises(ValueError, match=r"^prompts/LR\.jsonl: its prompts do not match the checksum in its header"):
        check_current("map.safetensors", record)


def test_verify_names_damaged_and_unrecorded_results_and_goes_on(in_workdir, capsys):
    os.makedirs("results")
    open("results/cut.json", "w").write('{"prompts_sha256": {')
    open("results/cut.safetensors", "wb").write(b"\x08\x00")
    open("results/number.json", "w").write("3")
    save_tensors({"x": torch.ones(2)}, "results/old.safetensors", metadata={"variants": "[]"})
    assert verify.main(["results"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("(a 'touch' line: touch that prompt file and rerun snakemake")
    assert [line.split(" (")[0] for line in out[:-1]] == [
        "error: results/cut.json: not a readable JSON file",
        "error: results/cut.safetensors: not a readable tensor file",
        "error: results/old.safetensors: records no prompt files it was computed from",
        "0 of 3 files intact",
    ]
