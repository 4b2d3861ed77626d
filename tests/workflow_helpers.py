"""Helpers for tests that run the real Snakemake workflow through its command line (the
Python API has no stable reference in 9.x): the tiny config, a fresh copy of the workflow
as a clone would have it, and a runner that reports Snakemake's output when it fails."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from minormech.prompts import PromptRecipe, read_prompts, write_prompts

SNAKEMAKE = [sys.executable, "-m", "snakemake"]

#: What a clone holds that the workflow needs.
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "config", "envs", "minormech")

TINY = {
    "test_weights": 8,
    "sites": ["k", "v"],
    "prompts": {
        "max_prompt_tokens": 60,
        "probe_train": 48,
        "probe_test_per_weight": 2,
        "probe_control": 8,
        "attribution": 8,
        "patching": 4,
    },
    "patching": {"layers": [0, 29], "batch_size": 4, "alignment": "end"},
    "activations": {
        "batch_size": 8,
        "store_dtype": "float16",
        "chunks": {"probe_train": 2, "probe_test": 1, "probe_control": 1},
    },
    "probe": {
        "regime": "improved",
        "d_proj": 32,
        "seed": 0,
        "keep_in_memory": True,
        "paper": {"lr": 1.0e-4, "batch_size": 1, "steps": 100},
        "improved": {"lr": 1.0e-3, "batch_size": 8, "max_epochs": 3, "patience": 2, "val_fraction": 0.2},
    },
    # Knockouts of the last layer only (9 reruns of one layer per batch); all 270 would add
    # minutes. tests/test_heads.py checks them against full forwards.
    "heads": {"enabled": True, "prompts": 2, "batch_size": 2, "knockout": True, "knockout_layers": [29], "top": 2},
}


def copy_workflow(repo_root: Path, destination: Path, extra: tuple[str, ...] = ()) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in (*WORKFLOW_FILES, *extra):
        source = repo_root / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, destination / name)
    return destination


def run(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def error_lines(stderr: str) -> list[str]:
    """The one-line job errors rule scripts print (minormech.runlog)."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def isolated_env(root: Path) -> dict[str, str]:
    """The environment with HOME and TMPDIR pointing at empty directories under root and no
    user-configured cache locations, to see what a run writes outside its working directory."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "XDG_CACHE_HOME",
            "XDG_CONFIG_HOME",
            "XDG_DATA_HOME",
            "MPLCONFIGDIR",
            "HF_HOME",
            "HF_HUB_CACHE",
            "TORCH_HOME",
            "TORCHINDUCTOR_CACHE_DIR",
            "TRITON_CACHE_DIR",
        )
    }
    for name, key in (("home", "HOME"), ("tmp", "TMPDIR")):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[key] = str(root / name)
    return env


def edit_first_prompt_weight(path: Path) -> None:
    """Change the first prompt's weight in a prompt file, the record still valid, and keep
    the file's modification time: a hand edit that Snakemake cannot see."""
    stamp = path.stat().st_mtime_ns
    header, first, *rest = path.read_text().splitlines(keepends=True)
    record = json.loads(first)
    record["weight"][0] += 1
    path.write_text("".join([header, json.dumps(record) + "\n", *rest]))
    os.utime(path, ns=(stamp, stamp))


def rewrite_first_prompt_weight(path: Path) -> None:
    """Write a prompt file again, valid and with its own recipe and checksum, with the first
    prompt's weight changed, and keep the file's modification time: a prompt file that
    passes every check of its own but holds other prompts than the results made from it
    were computed from (one copied in from another run, say), which Snakemake cannot see."""
    _rewrite_first_prompt(path, lambda prompts: {"weight": [prompts[0].weight[0] + 1, *prompts[0].weight[1:]]})


def rewrite_first_prompt_tokens(path: Path) -> None:
    """rewrite_first_prompt_weight, with the first prompt's token ids replaced by the
    second's: a valid prompt file whose shards hold activations of other token sequences."""
    _rewrite_first_prompt(path, lambda prompts: {"input_ids": prompts[1].input_ids})


def _rewrite_first_prompt(path: Path, changes) -> None:
    stamp = path.stat().st_mtime_ns
    header = json.loads(path.read_text().splitlines()[0])
    prompts = read_prompts(path)
    first = dataclasses.replace(prompts[0], **changes(prompts))
    write_prompts(path, [first, *prompts[1:]], PromptRecipe(**header["recipe"]))
    os.utime(path, ns=(stamp, stamp))
