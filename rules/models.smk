# Every model a job runs is made by rule `model` (minormech.plan: analysed, random-init,
# trained and tokenizer-only models), whose script dispatches on the model's plan row. Hub
# weights are downloaded first by the local checkpoint `download_model`: on a cluster it runs
# on the login node, which can reach the hub when compute nodes cannot. A checkpoint, because
# with `layers: all` a new hub model's layer count is read from the config.json it fetches.
checkpoint download_model:
    output:
        paths.download_record(),
    log:
        paths.log("download_model", "{model}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        entry=lambda wildcards: canonical(PLAN.model(wildcards.model).entry),
        cache_dir=config["model_cache"],
    script:
        "../workflow/scripts/download_model.py"


rule model:
    input:
        unpack(lambda wildcards: PLAN.model_inputs(wildcards.model)),
    output:
        paths.manifest(),
    log:
        paths.log("model", "{model}"),
    benchmark:
        paths.benchmark("model", "{model}")
    conda:
        ENV
    threads: THREADS
    resources:
        mem_mb=lambda wildcards: PLAN.model_mem_mb(wildcards.model),
        runtime=240,
        gpu=lambda wildcards: PLAN.model_gpus(wildcards.model),
    params:
        recipe=lambda wildcards: canonical(PLAN.model_recipe(wildcards.model)),
    script:
        "../workflow/scripts/model.py"
