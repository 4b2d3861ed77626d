"""One probe job, in shard mode or stream mode: train the probes of its (site, kind)
entries from one activation source, predict the held-out test prompts, and write each
entry's files (minormech.probe_results).

Shard mode runs one entry (one site, one kind) from the shards; stream mode runs every
site and kind of a (model, task) from the model's own forward passes. Both go through
`run_probe_job`, so the two modes train the same stacks in the same order and write the
same files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from minormech.controls import least_squares_predictions
from minormech.probe_results import (
    POOLINGS,
    ControlScores,
    ProbeIdentity,
    ProbeOutputs,
    ProbePredictions,
    ProbeReport,
    ProbeVariants,
    TestPrompts,
    control_task_targets,
    write_probe_results,
)
from minormech.probes import (
    ActivationSource,
    ProbeGroup,
    ProbeStack,
    ProbeTraining,
    predict_stacks,
    train_probe_groups,
    validation_mask,
)
from minormech.prompts import Prompt
from minormech.provenance import PromptDigests
from minormech.ridge_probes import PoolingTap, RidgeSettings
from minormech.tasks import WeightTable, get_task
from minormech.uncertainty import Bootstrap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportSettings:
    """What a probe table reports beside the probes: the least-squares ceiling, the
    control task (pi(w) for a seeded permutation pi, seeded by `seed`, scored on new prompts
    of weights seen in training) and the bootstrap."""

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
    """One (site, probe kind) of a job, where its three files go, and the prompt files its
    probes are computed from (minormech.provenance; a filtered kind's include xi's)."""

    site: str
    kind: str
    variants: ProbeVariants
    outputs: ProbeOutputs
    prompts: PromptDigests


@dataclass(frozen=True)
class ProbeJob:
    """What one job trains: its model and task, layers, training settings and report."""

    model_id: str
    task: str
    layers: Sequence[int]
    table: WeightTable
    settings: ProbeTraining
    report_settings: ReportSettings
    ridge: RidgeSettings | None = None

    @classmethod
    def of_rule(cls, model_id: str, task: str, dataset_file: str, params) -> ProbeJob:
        """The job of a probe or stream_probes rule: its params hold `layers`, the `probe`
        config section and the `report` settings (minormech.plan RunPlan.probe_report)."""
        table = WeightTable.read_tsv(dataset_file, task)
        settings = ProbeTraining.from_config(params.probe)
        ridge = RidgeSettings.from_config(params.probe["ridge"])
        return cls(model_id, task, params.layers, table, settings, ReportSettings(**params.report), ridge)


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


@dataclass(frozen=True)
class ProbeSources:
    """The activations a job reads: the probe-training and probe-test prompts, and the
    control task's evaluation prompts (new prompts of weights seen in training; None when
    the control task is off)."""

    train: ActivationSource
    test: ActivationSource
    control: ActivationSource | None = None


def seen_weights(train: ActivationSource, settings: ProbeTraining) -> np.ndarray:
    """The weight ids whose prompts the probes trained on: every probe-training prompt's,
    minus the validation weights of the improved regime (held out of training)."""
    weight_ids = np.array([p.weight_id for p in train.prompts])
    if settings.regime == "improved":
        weight_ids = weight_ids[~validation_mask(weight_ids, settings.val_fraction, settings.seed)]
    return np.unique(weight_ids)


def control_scores(
    pairs: Sequence[tuple[ProbeStack, ProbeStack]], sources: ProbeSources, job: ProbeJob, control_table, batch_size: int
) -> list[ControlScores]:
    """Score (task probe, control-task probe) pairs on the control prompts whose weight the
    probes were trained on (a prompt of a validation weight is left out), all pairs from
    the same reads of the source (in stream mode: one forward per control prompt)."""
    control = sources.control
    seen = np.isin([p.weight_id for p in control.prompts], seen_weights(sources.train, job.settings))
    if not seen.any():
        raise ValueError(
            f"{job.task}: none of the {len(control.prompts)} control-task prompts has a weight the probes "
            "trained on; raise prompts.probe_control or prompts.probe_train"
        )
    predictions, index = predict_stacks([stack for pair in pairs for stack in pair], control, batch_size, select=seen)
    weight_ids = torch.tensor([control.prompts[i].weight_id for i in index.tolist()])
    train_ids = torch.as_tensor(job.table.train_ids)
    train_weights = torch.as_tensor(job.table.weights[job.table.train_ids], dtype=torch.float32)
    return [
        ControlScores(
            task_predictions=predictions[2 * p],
            control_predictions=predictions[2 * p + 1],
            weight_ids=weight_ids,
            targets=control.targets[index],
            control_targets=control_table[weight_ids],
            baselines=(train_weights.mean(0), control_table[train_ids].mean(0)),
        )
        for p in range(len(pairs))
    ]


def run_probe_job(job: ProbeJob, entries: Sequence[ProbeEntry], sources: ProbeSources, device, run: JobRun) -> None:
    """Train every entry's stack (and, after them, one control-task stack per unfiltered
    entry when the control task is on, stopping with it) from the same batches, predict the
    test prompts, score each unfiltered stack and its control on the control prompts and
    write each entry's files."""
    ridge_sites = [e.site for e in entries if e.kind == "unfiltered"] if job.ridge is not None else []
    train, test = sources.train, sources.test
    if ridge_sites:
        train = PoolingTap(train, ridge_sites).record(job.ridge.max_train_prompts)
        test = PoolingTap(test, ridge_sites)
    controlled = [i for i, e in enumerate(entries) if e.kind == "unfiltered" and job.report_settings.control_task]
    if controlled and sources.control is None:
        raise ValueError(f"{job.task}: controls.control_task is on but the job has no control-task prompts")
    control_table = control_task_targets(job.table, job.report_settings.seed) if controlled else None
    groups = [ProbeGroup(e.site, e.variants.masks, name=f"{e.site} {e.kind}") for e in entries]
    groups += [
        ProbeGroup(entries[i].site, control_targets=control_table, name=f"{entries[i].site} control task", follows=i)
        for i in controlled
    ]
    stacks, summaries = train_probe_groups(
        train, groups, job.settings, run.max_positions, device, run.progress, eval_batch_size=run.eval_batch_size
    )
    readouts = {}
    if ridge_sites:
        start = time.perf_counter()
        train.fill_missing(run.eval_batch_size)
        readouts = train.fit(job.ridge)
        test.predict_with(readouts)
        log.info("ridge readouts of %s fitted in %.1f s", ridge_sites, time.perf_counter() - start)
    predictions, index = predict_stacks(stacks[: len(entries)], test, run.predict_batch_size)
    report = job.report_settings.report(job.task, job.table, test.prompts)
    extra = run.summary_extra()
    control_of = {i: len(entries) + c for c, i in enumerate(controlled)}
    pairs = [(stacks[i], stacks[c]) for i, c in control_of.items()]
    scored = control_scores(pairs, sources, job, control_table, run.predict_batch_size) if pairs else []
    scores = dict(zip(control_of, scored))
    for i, entry in enumerate(entries):
        summary = {**summaries[i], **extra}
        control = scores.get(i)
        if i in control_of:
            summary["control_task"] = summaries[control_of[i]]
        ridge = {}
        if entry.kind == "unfiltered" and ridge_sites:
            ridge = {pooling: test.predictions[entry.site, pooling][:, index] for pooling in POOLINGS}
            summary["ridge_alphas"] = {pooling: readouts[entry.site, pooling].alphas for pooling in POOLINGS}
        write_probe_results(
            entry.outputs,
            ProbeIdentity(job.model_id, job.task, entry.site, job.layers, entry.variants, entry.prompts),
            ProbePredictions(predictions[i], index, control, ridge),
            TestPrompts(test.prompts, test.targets, len(train.prompts)),
            report,
            job.settings,
            summary,
        )
