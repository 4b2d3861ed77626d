"""Job counts stated in the README and docs/ come from dry runs, never from memory.

Each statement below is found in its document by a pattern whose group is the stated number,
and compared with the jobs a dry run of the config it names plans in a fresh copy of the
workflow (as a clone would have it, with nothing built yet). When a change to the workflow
adds or removes jobs, these tests name every sentence that now says the wrong number. Every
"N ... jobs" in those documents is either such a statement or listed in NOT_A_DRY_RUN with the
reason it is not one.
"""

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from workflow_helpers import copy_workflow, job_counts, run

#: The overlay for "with `probe.source: shards` and enough disk" (docs/SLURM.md); the file is
#: written into each copy of the workflow.
SHARDS = "shards-with-enough-disk.yaml"
SHARDS_OVERLAY = {"probe": {"source": "shards"}, "storage": {"limit_gb": 1.0e8}}

LLAMA_3B = "config/llama-3.2-3b.yaml"
LLAMA_8B = "config/llama-3.1-8b.yaml"
SHAPED = "config/llama-3.2-3b-shaped-cpu.yaml"
SHAPED_BF16 = (SHAPED, "config/llama-3.2-3b-shaped-cpu-bf16.yaml")
#: The rules of docs/PERFORMANCE.md's per-rule tables (the ones that write benchmark files),
#: and the text each of those tables follows.
BENCHMARKED = ("stream_probes", "patching", "head_views", "attribution", "model", "probe")
#: The bfloat16 run reused the float32 run's model, so its table has no `model` row.
BENCHMARKED_BF16 = tuple(rule for rule in BENCHMARKED if rule != "model")
SHAPED_TABLE = r"rule_table\.py logs/benchmarks`\):"
BF16_TABLE = r"are not matmul-bound\):"


def prose(pattern: str) -> re.Pattern:
    """`pattern` with each space matching any run of whitespace, so that rewrapping a
    paragraph does not lose a statement."""
    return re.compile(pattern.replace(" ", r"\s+"), re.MULTILINE)


def unique_match(pattern: str, text: str, where: str, start: int = 0, end: int | None = None) -> re.Match:
    matches = list(prose(pattern).finditer(text, start, len(text) if end is None else end))
    assert len(matches) == 1, f"{where}: {len(matches)} matches of {pattern!r}; update it in tests/test_docs.py"
    return matches[0]


@dataclass(frozen=True)
class JobCount:
    """A job count a document states: the number `pattern` captures in `doc` (in the table
    that follows `table_after`, when given), and the jobs of the dry run of `configs`
    (overlays of config/config.yaml, in order) it counts: those of `rules` (every rule when
    empty) of `model` (every model when None), less those of `excluded`."""

    doc: str
    pattern: str
    configs: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    model: str | None = None
    excluded: tuple[str, ...] = ()
    table_after: str | None = None

    def stated(self, text: str) -> re.Match:
        if self.table_after is None:
            return unique_match(self.pattern, text, self.doc)
        table = text.index("\n|", unique_match(self.table_after, text, self.doc).end())
        end = text.find("\n\n", table)
        where = f"{self.doc}, table after {self.table_after!r}"
        return unique_match(self.pattern, text, where, table, len(text) if end < 0 else end)

    def planned(self, jobs: Counter) -> int:
        return sum(
            count
            for (rule, model), count in jobs.items()
            if (not self.rules or rule in self.rules)
            and (self.model is None or model == self.model)
            and rule not in self.excluded
        )


def _table_row(rule: str, *columns: str) -> str:
    """The `jobs` cell of a Markdown table row that starts with `rule` and then `columns`."""
    return "^\\| " + " \\| ".join(re.escape(cell) for cell in (rule, *columns)) + " \\| (\\d+) \\|"


STATEMENTS = (
    # README: the main job, the GPU positive control, the SLURM summary and its table.
    JobCount("README.md", r"Snakemake's (\d+) jobs"),
    JobCount("README.md", r"no random-init model\): (\d+)\s+jobs", ("config/quick.yaml",)),
    JobCount("README.md", r"its dry run lists (\d+) jobs", ("config/positive-control-gpu.yaml",)),
    JobCount("README.md", r"the jobs: (\d+) for Llama-3\.2-3B", (LLAMA_3B,)),
    JobCount("README.md", r"\((\d+) stream_probes, two per\s+task", (LLAMA_3B,), ("stream_probes",)),
    JobCount("README.md", r"random-init control, (\d+) attribution", (LLAMA_3B,), ("attribution",)),
    JobCount("README.md", r"(\d+) head_views\s+and \d+ patching jobs with", (LLAMA_3B,), ("head_views",)),
    JobCount("README.md", r"and (\d+) patching jobs with `gpu=1`", (LLAMA_3B,), ("patching",)),
    JobCount("README.md", r"(\d+) `probe` jobs that put", (LLAMA_3B,), ("probe",)),
    *(
        JobCount("README.md", pattern, (config,), (rule,), owner)
        for config, model in ((LLAMA_3B, "llama-3.2-3b"), (LLAMA_8B, "llama-3.1-8b"))
        for pattern, rule, owner in (
            (r"^\| stream_probes \((\d+) \+ \d+ random-init\) \|", "stream_probes", model),
            (r"^\| stream_probes \(\d+ \+ (\d+) random-init\) \|", "stream_probes", f"{model}-random-init"),
            (r"^\| patching \((\d+), one per site\) \|", "patching", None),
            (r"^\| head_views \((\d+)\) \|", "head_views", None),
            (r"^\| attribution \((\d+)\) \|", "attribution", None),
        )
    ),
    # docs/PERFORMANCE.md: the 3B-shaped CPU run and its per-rule table, the bfloat16 overlay
    # (which reused the float32 run's model) and its table, and the projection table.
    JobCount("docs/PERFORMANCE.md", r"its dry run now lists (\d+)", (SHAPED,)),
    *(
        JobCount("docs/PERFORMANCE.md", _table_row(rule), (SHAPED,), (rule,), table_after=SHAPED_TABLE)
        for rule in BENCHMARKED
    ),
    JobCount("docs/PERFORMANCE.md", _table_row("all"), (SHAPED,), BENCHMARKED, table_after=SHAPED_TABLE),
    JobCount("docs/PERFORMANCE.md", r"summary; (\d+) in today's DAG\)", (SHAPED,), excluded=BENCHMARKED),
    JobCount(
        "docs/PERFORMANCE.md", r"\((\d+) in today's dry run, less the model job", SHAPED_BF16, excluded=("model",)
    ),
    *(
        JobCount("docs/PERFORMANCE.md", _table_row(rule), SHAPED_BF16, (rule,), table_after=BF16_TABLE)
        for rule in BENCHMARKED_BF16
    ),
    JobCount("docs/PERFORMANCE.md", _table_row("all"), SHAPED_BF16, BENCHMARKED_BF16, table_after=BF16_TABLE),
    *(
        JobCount("docs/PERFORMANCE.md", _table_row(rule, Path(config).name), (config,), (rule,), model)
        for config, model in ((LLAMA_3B, "llama-3.2-3b"), (LLAMA_8B, "llama-3.1-8b"))
        for rule in ("stream_probes", "attribution", "patching", "head_views")
    ),
    # docs/SLURM.md: the jobs of the 3B paper run, in stream mode and in shard mode.
    JobCount("docs/SLURM.md", r"that is (\d+) stream_probes jobs", (LLAMA_3B,), ("stream_probes",), "llama-3.2-3b"),
    JobCount(
        "docs/SLURM.md",
        r"(\d+) more for the random-init control",
        (LLAMA_3B,),
        ("stream_probes",),
        "llama-3.2-3b-random-init",
    ),
    JobCount("docs/SLURM.md", r"(\d+) attribution, \d+ head_views", (LLAMA_3B,), ("attribution",)),
    JobCount("docs/SLURM.md", r"\d+ attribution, (\d+) head_views", (LLAMA_3B,), ("head_views",)),
    JobCount("docs/SLURM.md", r"(\d+) patching jobs \(\d+ jobs in all", (LLAMA_3B,), ("patching",)),
    JobCount("docs/SLURM.md", r"patching jobs \((\d+) jobs in all", (LLAMA_3B,)),
    JobCount("docs/SLURM.md", r"(\d+) of them `probe` jobs", (LLAMA_3B,), ("probe",)),
    JobCount(
        "docs/SLURM.md",
        r"the same run has (\d+) activation jobs for the model",
        (LLAMA_3B, SHARDS),
        ("activations",),
        "llama-3.2-3b",
    ),
    JobCount("docs/SLURM.md", r"\((\d+) activation jobs in all\)", (LLAMA_3B, SHARDS), ("activations",)),
    JobCount("docs/SLURM.md", r"and its (\d+) probe jobs train from those shards", (LLAMA_3B, SHARDS), ("probe",)),
)

#: "N ... jobs" phrases that are not the jobs of a fresh dry run: (document, a pattern of the
#: text around the number) and why it is left out.
NOT_A_DRY_RUN = {
    ("README.md", r"\(probes 20 jobs,"): "the jobs a second run added after a config change",
    ("README.md", r"110\s+jobs, 14 min 21 s"): "the tests' own Qwen2 and Mistral DAG, not a shipped config",
    ("docs/PERFORMANCE.md", r"ran its 77 jobs in"): "the jobs of the run measured at cb3e7f5",
    ("docs/PERFORMANCE.md", r"The other 45 jobs \("): "the jobs of the run measured at cb3e7f5",
    ("docs/PERFORMANCE.md", r"model\): 36 jobs in"): "the jobs of the run measured at cb3e7f5",
    ("docs/PERFORMANCE.md", r"are 2 more `prompts` jobs"): "the difference between today's DAG and the measured run's",
    ("docs/PERFORMANCE.md", r"reruns 4 probe jobs"): "the jobs a change reschedules, measured by a benchmark",
}

#: How a document writes a job count: a number, up to two words, "jobs".
JOB_COUNT_PHRASE = re.compile(r"\b(\d[\d,]*)\s+(?:[`\w-]+\s+){0,2}jobs\b")


def planned_jobs(dry_run_output: str) -> Counter:
    """{(rule, model wildcard or None): jobs} of a dry run's job list."""
    jobs = Counter()
    job_header = r"^(?:local)?(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n?)*)"
    for match in re.finditer(job_header, dry_run_output, re.MULTILINE):
        wildcards = re.search(r"^\s+wildcards: (.*)$", match.group(2), re.MULTILINE)
        values = dict(item.split("=", 1) for item in wildcards.group(1).split(", ")) if wildcards else {}
        jobs[match.group(1), values.get("model")] += 1
    by_rule = Counter()
    for (rule, _), count in jobs.items():
        by_rule[rule] += count
    assert by_rule == job_counts(dry_run_output), "the job list and the Job stats table disagree"
    return jobs


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory, repo_root) -> dict[tuple[str, ...], Counter]:
    """The planned jobs of every config the statements name, two dry runs at a time, each in
    its own fresh copy of the workflow."""
    config_sets = sorted({statement.configs for statement in STATEMENTS})

    def dry_run(configs: tuple[str, ...]) -> Counter:
        workdir = copy_workflow(repo_root, tmp_path_factory.mktemp("dry-run"))
        (workdir / SHARDS).write_text(yaml.safe_dump(SHARDS_OVERLAY))
        return planned_jobs(run(workdir, "-n", "--nolock", *(("--configfile", *configs) if configs else ())).stdout)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(config_sets, pool.map(dry_run, config_sets)))


def _statement_id(statement: JobCount) -> str:
    """doc:configs:rules (less excluded ones) @ model, for test ids."""
    configs = "+".join(Path(config).stem for config in statement.configs) or "config"
    rules = ("+".join(statement.rules) or "all") + "".join(f"-{rule}" for rule in statement.excluded)
    return f"{statement.doc}:{configs}:{rules}" + (f"@{statement.model}" if statement.model else "")


@pytest.mark.parametrize("statement", STATEMENTS, ids=_statement_id)
def test_stated_job_count_is_the_dry_runs(statement, repo_root, dry_runs):
    stated = statement.stated((repo_root / statement.doc).read_text())
    planned = statement.planned(dry_runs[statement.configs])
    assert int(stated.group(1).replace(",", "")) == planned, (
        f"{statement.doc} says {stated.group(0)!r}; the dry run of {list(statement.configs) or ['config/config.yaml']} "
        f"plans {planned} such jobs"
    )


def test_every_job_count_in_the_docs_is_checked_or_explained(repo_root):
    for path in [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]:
        doc = path.relative_to(repo_root).as_posix()
        text = path.read_text()
        checked = {statement.stated(text).start(1) for statement in STATEMENTS if statement.doc == doc}
        explained = set()
        for where, pattern in NOT_A_DRY_RUN:
            if where == doc:
                match = unique_match(pattern, text, doc)
                explained |= set(range(match.start(), match.end()))
        unaccounted = [
            " ".join(match.group(0).split())
            for match in JOB_COUNT_PHRASE.finditer(text)
            if match.start(1) not in checked and match.start(1) not in explained
        ]
        assert not unaccounted, f"{doc}: job counts neither checked against a dry run nor explained: {unaccounted}"
