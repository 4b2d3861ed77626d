# Probes read activations from shards (rule probe: one job per site and probe kind) or
# from the model itself (rule stream_probes: one job per model and task). The storage plan
# in common.smk assigns each model one source (probe.source); both rules write the same
# files, so the figures do not depend on the choice. A stream job trains both probe kinds
# for every task (the filtered variants need the first pair's xi, so it waits for
# attribution); shard mode trains filtered probes only for the first pair's tasks.

if SHARD_MODELS:

    rule probe:
        input:
            unpack(probe_inputs),
        output:
            table="results/{model}/probes/{task}/{site}/{probe_kind}.csv",
            predictions="results/{model}/probes/{task}/{site}/{probe_kind}_predictions.safetensors",
            summary="results/{model}/probes/{task}/{site}/{probe_kind}.json",
        log:
            "logs/probe/{model}/{task}/{site}/{probe_kind}.log",
        wildcard_constraints:
            model="|".join(SHARD_MODELS),
        params:
            layers=lambda wildcards: layers_of(wildcards.model),
            probe=probe_params(),
            report=probe_report_params(),
            device=config["compute"]["device"],
        threads: THREADS
        resources:
            mem_mb=8000,
            runtime=240,
            gpu=GPUS,
        conda:
            ENV
        script:
            "../workflow/scripts/probe.py"


STREAM_ANALYSED = [model for model in STREAM_MODELS if model not in RANDOM_INIT_MODELS]
STREAM_RANDOM_INIT = [model for model in STREAM_MODELS if model in RANDOM_INIT_MODELS]

if STREAM_MODELS:

    rule stream_probes:
        input:
            dataset="results/datasets/{task}.tsv",
            probe_train_prompts=prompt_input("probe_train"),
            probe_test_prompts=prompt_input("probe_test"),
            model=model_manifest,
            xi=f"results/{{model}}/xi/{'-'.join(FILTER_PAIR)}.safetensors",
        output:
            tables=stream_outputs(".csv"),
            predictions=stream_outputs("_predictions.safetensors"),
            summaries=stream_outputs(".json"),
        log:
            "logs/stream_probes/{model}/{task}.log",
        wildcard_constraints:
            model="|".join(STREAM_ANALYSED) or "(?!)",  # no analysed model streams: matches nothing
        params:
            sites=SITES,
            kinds=PROBE_KINDS,
            layers=lambda wildcards: layers_of(wildcards.model),
            probe=probe_params("keep_in_memory"),
            report=probe_report_params(),
            chunks=canonical(config["activations"]["chunks"]),
            forward_batch_size=config["activations"]["batch_size"],
            device=config["compute"]["device"],
            dtype=config["compute"]["dtype"],
        threads: THREADS
        resources:
            mem_mb=16000,
            runtime=720,
            gpu=GPUS,
        conda:
            ENV
        script:
            "../workflow/scripts/stream_probes.py"

    if STREAM_RANDOM_INIT:

        # A random-init control streams its unfiltered probes (and the control task) only:
        # it has no xi map of its own and appears only in figure 1. Keyword params not
        # named here are inherited from stream_probes.
        use rule stream_probes as stream_probes_random_init with:
            input:
                dataset="results/datasets/{task}.tsv",
                probe_train_prompts=prompt_input("probe_train"),
                probe_test_prompts=prompt_input("probe_test"),
                model=model_manifest,
            output:
                tables=stream_outputs(".csv", ["unfiltered"]),
                predictions=stream_outputs("_predictions.safetensors", ["unfiltered"]),
                summaries=stream_outputs(".json", ["unfiltered"]),
            log:
                "logs/stream_probes/{model}/{task}.log",
            wildcard_constraints:
                model="|".join(STREAM_RANDOM_INIT),
            params:
                kinds=["unfiltered"],
