"""Per-rule wall time and peak memory of a run, from the `benchmark:` files every
model-running rule writes (Snakemake's own TSV format, logs/benchmarks/{rule}/...tsv).

    python benchmarks/rule_table.py [logs/benchmarks]

prints one Markdown row per rule: jobs, total and largest wall seconds, largest peak
resident memory (max_rss, MB) and CPU seconds. A rerun job overwrites its file, so the
table is of the latest run of every job.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RuleCost:
    rule: str
    jobs: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    max_rss_mb: float = 0.0
    cpu_s: float = 0.0

    def add(self, row: dict[str, str]) -> None:
        seconds = float(row["s"])
        self.jobs += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)
        self.max_rss_mb = max(self.max_rss_mb, _number(row["max_rss"]))
        self.cpu_s += _number(row["cpu_time"])


def _number(text: str) -> float:
    """Snakemake writes NA where psutil could not measure (a job shorter than its sampling)."""
    return float(text) if text not in ("", "NA", "-") else 0.0


def rule_costs(directory: Path) -> list[RuleCost]:
    """One RuleCost per rule directory (or single TSV) under `directory`, by total time."""
    costs: dict[str, RuleCost] = {}
    for path in sorted(directory.rglob("*.tsv")):
        rule = path.relative_to(directory).parts[0].removesuffix(".tsv")
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            costs.setdefault(rule, RuleCost(rule)).add(rows[-1])
    return sorted(costs.values(), key=lambda cost: -cost.total_s)


def markdown(costs: list[RuleCost]) -> str:
    lines = [
        "| rule | jobs | total s | largest job s | largest peak RSS MB | CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in costs:
        lines.append(f"| {c.rule} | {c.jobs} | {c.total_s:.0f} | {c.max_s:.0f} | {c.max_rss_mb:.0f} | {c.cpu_s:.0f} |")
    total = sum(c.total_s for c in costs)
    lines.append(f"| all | {sum(c.jobs for c in costs)} | {total:.0f} | | {max(c.max_rss_mb for c in costs):.0f} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "logs/benchmarks")
    if not folder.is_dir():
        sys.exit(f"error: {folder}: no such directory (a run writes it: logs/benchmarks/)")
    print(markdown(rule_costs(folder)))
