"""benchmarks/rule_table.py: the per-rule table of a run's benchmark files (the table in
docs/PERFORMANCE.md is made with it), on files in Snakemake's own benchmark format."""

import subprocess
import sys

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(path, seconds, rss, cpu):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def test_rows_sum_each_rules_jobs_and_keep_the_largest_memory(tmp_path, repo_root):
    folder = tmp_path / "logs" / "benchmarks"
    write(folder / "attribution" / "m" / "LR.tsv", 10.0, 900.5, 18.0)
    write(folder / "attribution" / "m" / "MD.tsv", 30.0, 1200.0, 50.0)
    write(folder / "model" / "m.tsv", 5.0, "NA", 4.0)
    script = repo_root / "benchmarks" / "rule_table.py"
    result = subprocess.run([sys.executable, script, folder], capture_output=True, text=True, check=True)
    rows = result.stdout.splitlines()
    assert rows[2] == "| attribution | 2 | 40 | 30 | 1200 | 68 |"
    assert rows[3] == "| model | 1 | 5 | 5 | 0 | 4 |"
    assert rows[4] == "| all | 3 | 45 | | 1200 | |"


def test_a_missing_folder_is_one_line(tmp_path, repo_root):
    script = repo_root / "benchmarks" / "rule_table.py"
    result = subprocess.run([sys.executable, script, tmp_path / "none"], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().endswith(
        "no such directory (a run writes it: logs/benchmarks/)"
    )
