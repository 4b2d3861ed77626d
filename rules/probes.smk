rule probe_unfiltered:
    input:
        dataset="results/datasets/{task}.tsv",
        train_prompts="results/{model}/prompts/{task}/probe_train.jsonl",
        test_prompts="results/{model}/prompts/{task}/probe_test.jsonl",
        train_shards=lambda wildcards: shard_files(wildcards.model, wildcards.task, "probe_train"),
        test_shards=lambda wildcards: shard_files(wildcards.model, wildcards.task, "probe_test"),
    output:
        table="results/{model}/probes/{task}/{site}/unfiltered.csv",
        predictions="results/{model}/probes/{task}/{site}/unfiltered_predictions.safetensors",
        summary="results/{model}/probes/{task}/{site}/unfiltered.json",
    log:
        "logs/probe_unfiltered/{model}/{task}/{site}.log",
    params:
        layers=lambda wildcards: layers_of(wildcards.model),
        probe=config["probe"],
        device=config["compute"]["device"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    script:
        "../workflow/scripts/probe_unfiltered.py"
