"""One probe job, in shard mode or stream mode: train the probes of its (site, kind)
entries from one activation source, predict the held-out test prompts, and write each
entry's files (minormech.probe_results).

Shard mode runs one entry (one site, one kind) from the shards; stream mode runs every
site and kind of a (model, task) from the model's own forward passes. Both go through
`run_probe_job`, so the two modes train the same stacks in the same order and write the
same files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from minormech.controls import least_squares_predictions
from minormech.probe_results import (
    ProbeIdentity,
    ProbeOutputs,
    ProbePredictions,
    ProbeReport,
    ProbeVariants,
    TestPrompts,
    control_task_targets,
    write_probe_results,
)
from minormech.probes import ActivationSource, ProbeGroup, ProbeTraining, predict_stacks, train_probe_groups
from minormech.prompts import Prompt
from minormech.tasks import WeightTable, get_task
from minormech.uncertainty import Bootstrap


@dataclass(frozen=True)
class ReportSettings:
    """What a probe table reports beside the probes: the least-squares ceiling, the
    control task (pi(w) for a seeded permutation pi, seeded by `seed`) and the bootstrap."""

    least_squares: bool
    control_task: bool
    bootstrap: dict
    seed: int

    def report(self, task: str, table: WeightTable, test_prompts: Sequence[Prompt]) -> ProbeReport:
        """The report of one task's probes (`table` = the task's WeightTable)."""
        ceiling = None
        if self.least_squares:
            ceiling = torch.as_tensor(least_squares_predictions(get_task(task), test_prompts), dtype=torch.float32)
        return ProbeReport(torch.as_tensor(table.weights[table.train_ids]), ceiling, Bootstrap(**self.bootstrap))


@dataclass(frozen=True)
class ProbeEntry:
    """One (site, probe kind) of a job and where its three files go."""

    site: str
    kind: str
    variants: ProbeVariants
    outputs: ProbeOutputs


@dataclass(frozen=True)
class ProbeJob:
    """What one job trains: its model and task, layers, training settings and report."""

    model_id: str
    task: str
    layers: Sequence[int]
    table: WeightTable
    settings: ProbeTraining
    report_settings: ReportSettings

    @classmethod
    def of_rule(cls, model_id: str, task: str, dataset_file: str, params) -> ProbeJob:
        """The job of a probe or stream_probes rule: its params hold `layers`, the `probe`
        config section and the `report` settings (minormech.plan RunPlan.probe_report)."""
        table = WeightTable.read_tsv(dataset_file, task)
        settings = ProbeTraining.from_config(params.probe)
        return cls(model_id, task, params.layers, table, settings, ReportSettings(**params.report))


@dataclass(frozen=True)
class JobRun:
    """How a job reads its source: the positions a probe must cover, the batch of
    validation and test passes, the progress bar, and what its summaries add (called after
    training: a stream source counts its forward passes)."""

    max_positions: int
    eval_batch_size: int
    predict_batch_size: int
    progress: Callable[[Iterable, int], Iterable]
    summary_extra: Callable[[], dict]


def run_probe_job(
    job: ProbeJob, entries: Sequence[ProbeEntry], train: ActivationSource, test, device, run: JobRun
) -> None:
    """Train every entry's stack (and, after them, one control-task stack per unfiltered
    entry when the control task is on) from the same batches, predict the test prompts
    and write each entry's files. `test` is the test source (its `prompts` and `targets`)."""
    control_table = (
        control_task_targets(job.table, job.report_settings.seed) if job.report_settings.control_task else None
    )
    groups = [ProbeGroup(e.site, e.variants.masks, name=f"{e.site} {e.kind}") for e in entries]
    controlled = [i for i, e in enumerate(entries) if e.kind == "unfiltered" and control_table is not None]
    groups += [
        ProbeGroup(entries[i].site, control_targets=control_table, name=f"{entries[i].site} control task")
        for i in controlled
    ]
    stacks, summaries = train_probe_groups(
        train, groups, job.settings, run.max_positions, device, run.progress, eval_batch_size=run.eval_batch_size
    )
    predictions, index = predict_stacks(stacks, test, run.predict_batch_size)
    report = job.report_settings.report(job.task, job.table, test.prompts)
    extra = run.summary_extra()
    control_of = {i: len(entries) + c for c, i in enumerate(controlled)}
    for i, entry in enumerate(entries):
        summary = {**summaries[i], **extra}
        control = None
        if i in control_of:
            control, summary["control_task"] = (predictions[control_of[i]], control_table), summaries[control_of[i]]
        write_probe_results(
            entry.outputs,
            ProbeIdentity(job.model_id, job.task, entry.site, job.layers, entry.variants),
            ProbePredictions(predictions[i], index, control),
            TestPrompts(test.prompts, test.targets, len(train.prompts)),
            report,
            job.settings,
            summary,
        )
