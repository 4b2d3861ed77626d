"""Incremental cost: what a dry run schedules after each rule script is touched, and
after a few config edits, on a workflow whose every output is up to date.

The workflow is copied to a scratch directory and run for real on a small config
(benchmarks/incremental.yaml, about two minutes on 2 CPU cores), so that Snakemake plans
from the file times and provenance records of a real run (`--touch` records provenance
for only some jobs, which hides params changes). Each change is undone before the next.

A change may reschedule its own rule and what depends on it; an LLM-running rule
(one that loads the model's weights) must never be rescheduled by a change downstream
of it. `ok` says whether that holds for each change.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.common import REPO

#: Rules that run the language model (load its weights): the GPU hours.
LLM_RULES = {"model", "activations", "attribution", "patching"}
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow", "config", "envs", "minormech")
#: Config edits a user makes between runs: (description, dotted key, new value).
CONFIG_EDITS = [
    ("probe.improved.lr 1e-3 -> 2e-3", "probe.improved.lr", 2.0e-3),
    ("attribution.reduce sum -> abs_sum", "attribution.reduce", "abs_sum"),
    ("patching.layers [0, 29] -> [0]", "patching.layers", [0]),
    ("activations.store_dtype -> float32", "activations.store_dtype", "float32"),
]
CONFIG = REPO / "benchmarks" / "incremental.yaml"


def snakemake(workdir: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {workdir}:\n{result.stderr[-2000:]}")
    return result.stdout


def scheduled_jobs(dry_run: str) -> dict[str, int]:
    if "Job stats:" not in dry_run:
        return {}
    table = dry_run.split("Job stats:")[1].split("total")[0]
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE) if m.group(1) != "all"
    }


def rule_descendants(workdir: Path) -> dict[str, set[str]]:
    """rule -> every rule that (transitively) consumes its outputs, from --rulegraph."""
    dot = snakemake(workdir, "--rulegraph")
    names = {m.group(1): m.group(2) for m in re.finditer(r'^\s*(\d+)\[label = "(\w+)"', dot, re.MULTILINE)}
    children: dict[str, set[str]] = {name: set() for name in names.values()}
    for m in re.finditer(r"^\s*(\d+) -> (\d+)", dot, re.MULTILINE):
        children[names[m.group(1)]].add(names[m.group(2)])

    def below(rule: str) -> set[str]:
        found: set[str] = set()
        for child in children[rule]:
            found |= {child} | below(child)
        return found

    return {rule: below(rule) for rule in children}


def rules_of_scripts(workdir: Path) -> dict[str, list[str]]:
    """script file name -> rules whose `script:` it is."""
    owners: dict[str, list[str]] = {}
    for smk in sorted((workdir / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            if m := re.match(r"^rule (\w+):", line):
                rule = m.group(1)
            if rule and (m := re.search(r'"\.\./workflow/scripts/(\w+\.py)"', line)):
                owners.setdefault(m.group(1), []).append(rule)
    return owners


def up_to_date_workflow(workdir: Path, cores: int) -> None:
    workdir.mkdir(parents=True)
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, workdir / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, workdir / part)
    shutil.copy(CONFIG, workdir / "bench.yaml")
    snakemake(workdir, "--cores", str(cores), "--configfile", "bench.yaml")
    if scheduled_jobs(snakemake(workdir, "-n", "--configfile", "bench.yaml")):
        raise RuntimeError(f"{workdir}: a dry run after a complete run still schedules jobs")


def incremental_cost(workdir: Path, cores: int) -> list[dict]:
    up_to_date_workflow(workdir, cores)
    descendants = rule_descendants(workdir)
    rows = []

    def record(change: str, changed_rules: list[str], jobs: dict[str, int]) -> None:
        allowed = set(changed_rules).union(*(descendants.get(r, set()) for r in changed_rules))
        llm = {rule: n for rule, n in jobs.items() if rule in LLM_RULES}
        rows.append(
            {
                "change": change,
                "jobs": sum(jobs.values()),
                "by_rule": " ".join(f"{r}:{n}" for r, n in sorted(jobs.items())),
                "llm_jobs": sum(llm.values()),
                "ok": all(rule in allowed for rule in llm),
            }
        )

    for script, owners in sorted(rules_of_scripts(workdir).items()):
        path = workdir / "workflow" / "scripts" / script
        before = path.stat()
        path.touch()
        record(f"touch {script}", owners, scheduled_jobs(snakemake(workdir, "-n", "--configfile", "bench.yaml")))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    for change, key, value in CONFIG_EDITS:
        overlay = workdir / "edit.yaml"
        node: dict = {}
        *parents, last = key.split(".")
        cursor = node
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[last] = value
        overlay.write_text(
            yaml.safe_dump(_merge(yaml.safe_load(CONFIG.read_text()), node))
        )  # keys re-sorted, as an editor may
        jobs = scheduled_jobs(snakemake(workdir, "-n", "--configfile", "bench.yaml", "--configfile", overlay.name))
        owner = {
            "probe": ["probe"],
            "attribution": ["attribution"],
            "patching": ["patching"],
            "activations": ["activations"],
        }[key.split(".")[0]]
        record(change, owner, jobs)
    return rows


def _merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged
