# Feature attribution (§4.2.1): FA of every (site, layer) for one (model, task).
rule attribution:
    input:
        unpack(lambda wildcards: PLAN.attribution_inputs(wildcards.model, wildcards.task)),
        layer_count=layer_count_known,
    output:
        paths.attribution_map(),
    log:
        paths.log("attribution", "{model}", "{task}"),
    benchmark:
        paths.benchmark("attribution", "{model}", "{task}")
    conda:
        ENV
    threads: THREADS
    resources:
        **model_job(working_mb=4000, runtime=240),
    params:
        sites=PLAN.sites,
        layers=lambda wildcards: known_model(wildcards).layers,
        attribution=canonical(config["attribution"]),
        baseline_shards=lambda wildcards: PLAN.baseline_shards(wildcards.model),
        baseline_prompts=lambda wildcards: PLAN.baseline_prompts(wildcards.model),
        baseline_recipe=PLAN.prompt_recipe("probe_test"),
        prompt_recipe=PLAN.prompt_recipe("attribution"),
        seed=config["seed"],
        compute=PLAN.compute,
    script:
        "../workflow/scripts/attribution.py"
