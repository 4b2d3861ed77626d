"""The probe files of one (model, task, site, kind): in shard mode, train and test the
probes of every layer from the activation shards (unfiltered with the control task beside
it, or the four filtered variants of eq. 35, each `probe.seeds` times); in stream mode, put
in place what the (model, task)'s stream job trained (minormech.probe_job)."""

import shutil
from pathlib import Path

from minormech.models import ModelManifest, resolve_device, set_threads
from minormech.probe_job import JobRun, ProbeEntry, ProbeJob, ProbeSources, run_probe_job
from minormech.probe_results import ProbeOutputs, ProbeVariants
from minormech.probes import ProbeData
from minormech.prompts import PromptRecipe, read_drawn_prompts
from minormech.provenance import check_summary, merged, prompt_digests
from minormech.runlog import job_logger, progress
from minormech.shards import Shard, check_result, hook_widths, load_current_tensors, recorded_prompts
from minormech.tasks import WeightTable

log = job_logger(snakemake.log[0])
inputs, params, wildcards, output = snakemake.input, snakemake.params, snakemake.wildcards, snakemake.output
site, kind = wildcards.site, wildcards.probe_kind


def site_data(prompt_file, shard_files, prompt_set, site_widths):
    shards = [
        Shard(path)
        .expect(model_id=wildcards.model, task=wildcards.task, prompt_set=prompt_set)
        .expect_widths(site_widths)
        for path in shard_files
    ]
    recipe = PromptRecipe(**params.prompt_recipes[prompt_set])
    prompts = read_drawn_prompts(prompt_file, recipe, table, prompt_set)
    return ProbeData(shards, prompts, site, params.layers, params.probe["keep_in_memory"])


if "stream" in inputs.keys():
    trained = {name: Path(inputs.stream, site, Path(output[name]).name) for name in ("table", "predictions", "summary")}
    check_result(trained["predictions"])  # the stream job's files are results like any other
    check_summary(trained["summary"])
    for name, path in trained.items():
        shutil.copyfile(path, output[name])
    log.info("stream mode: %s %s %s probes from %s", wildcards.task, site, kind, inputs.stream)
else:
    set_threads(snakemake.threads)
    site_widths = ModelManifest.read(inputs.model).site_widths
    table = WeightTable.read_tsv(inputs.dataset, wildcards.task)  # read once for the three prompt sets
    train = site_data(inputs.train_prompts, inputs.train_shards, "probe_train", site_widths)
    test = site_data(inputs.test_prompts, inputs.test_shards, "probe_test", site_widths)
    control, prompt_files = None, [inputs.train_prompts, inputs.test_prompts]
    if "control_shards" in inputs.keys():
        control = site_data(inputs.control_prompts, inputs.control_shards, "probe_control", site_widths)
        prompt_files.append(inputs.control_prompts)
    widths = hook_widths(site_widths, [site], params.layers)
    xi = load_current_tensors(inputs.xi, list(widths), widths) if kind == "filtered" else None
    prompts = merged(prompt_digests(prompt_files), recorded_prompts(inputs.xi) if xi is not None else {})
    variants = ProbeVariants.of_kind(kind, site, params.layers, xi)
    entry = ProbeEntry(site, kind, variants, ProbeOutputs(**output), prompts)
    job = ProbeJob.of_rule(wildcards.model, wildcards.task, inputs.dataset, params)
    label = f"{wildcards.task} {site} {kind} probes ({job.settings.regime}, {job.settings.seeds} seeds)"
    max_positions = max(source.max_length for source in (train, test, control) if source is not None)
    run = JobRun(max_positions, 256, 64, progress(label), lambda: {"source": "shards"})
    run_probe_job(job, [entry], ProbeSources(train, test, control), resolve_device(params.device), run)
