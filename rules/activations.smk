rule activations:
    input:
        prompts=lambda wildcards: PLAN.prompts(wildcards.model, wildcards.task, wildcards.prompt_set),
        model=paths.manifest(),
        layer_count=layer_count_known,
    output:
        paths.shard(suffix=PLAN.shard_suffix),
    log:
        paths.log("activations", "{model}", "{task}", "{prompt_set}", "chunk{chunk}"),
    benchmark:
        paths.benchmark("activations", "{model}", "{task}", "{prompt_set}", "chunk{chunk}")
    conda:
        ENV
    threads: THREADS
    resources:
        **model_job(working_mb=4000, runtime=120),
    params:
        sites=PLAN.sites,
        layers=lambda wildcards: known_model(wildcards).layers,
        prompt_recipe=lambda wildcards: PLAN.prompt_recipe(wildcards.prompt_set),
        n_chunks=lambda wildcards: len(PLAN.chunk_names(wildcards.prompt_set)),
        batch_size=config["activations"]["batch_size"],
        store_dtype=config["activations"]["store_dtype"],
        hdf5=PLAN.hdf5,
        compute=PLAN.compute,
    script:
        "../workflow/scripts/activations.py"
