# Probes (§4.1) read their activations from shards or from the model itself: the run plan
# gives each model one probe source (probe.source; minormech.storage). Rule probe always
# writes a (model, task, site, kind)'s files: in shard mode it trains them from the shards,
# in stream mode it puts in place what that (model, task)'s stream_probes job trained. A
# stream job trains every site and kind in one pass over the prompts, so in stream mode the
# unfiltered probes (figure 1) also wait for the xi map the filtered ones need.
rule probe:
    input:
        unpack(
            lambda wildcards: PLAN.probe_inputs(wildcards.model, wildcards.task, wildcards.site, wildcards.probe_kind)
        ),
        layer_count=layer_count_known,
    output:
        **{name: paths.probe_file(suffix=suffix) for name, suffix in paths.PROBE_SUFFIXES.items()},
    log:
        paths.log("probe", "{model}", "{task}", "{site}", "{probe_kind}"),
    benchmark:
        paths.benchmark("probe", "{model}", "{task}", "{site}", "{probe_kind}")
    conda:
        ENV
    threads: lambda wildcards: THREADS if PLAN.trains_from_shards(wildcards.model) else 1
    resources:
        mem_mb=lambda wildcards: PLAN.probe_job_mb(wildcards.model),
        runtime=240,
        gpu=lambda wildcards: PLAN.gpus if PLAN.trains_from_shards(wildcards.model) else 0,
    params:
        layers=lambda wildcards: known_model(wildcards).layers,
        probe=canonical(PLAN.probe_settings()),
        report=PLAN.probe_report,
        prompt_recipes=PLAN.prompt_recipes(*PLAN.probe_sets),
        device=config["compute"]["device"],
    script:
        "../workflow/scripts/probe.py"


rule stream_probes:
    input:
        unpack(lambda wildcards: PLAN.stream_inputs(wildcards.model, wildcards.task)),
        layer_count=layer_count_known,
    output:
        directory(paths.stream_dir()),
    log:
        paths.log("stream_probes", "{model}", "{task}"),
    benchmark:
        paths.benchmark("stream_probes", "{model}", "{task}")
    conda:
        ENV
    threads: THREADS
    resources:
        **model_job(working_mb=16000, runtime=720, ridge=True),
    params:
        sites=PLAN.sites,
        kinds=lambda wildcards: PLAN.model(wildcards.model).probe_kinds,
        layers=lambda wildcards: known_model(wildcards).layers,
        probe=canonical(PLAN.probe_settings("keep_in_memory")),
        report=PLAN.probe_report,
        prompt_recipes=PLAN.prompt_recipes(*PLAN.probe_sets),
        chunks=canonical(config["activations"]["chunks"]),
        forward_batch_size=config["activations"]["batch_size"],
        compute=PLAN.compute,
    script:
        "../workflow/scripts/stream_probes.py"
