# Controls (config key `controls`) that need rules of their own: the random-init control
# model of each analysed model, and the per-model summary of what the figures show, with
# every number's interval. The least-squares ceiling and the control task live in the probe
# jobs; the patching controls in the patching job.

if RANDOM_INIT_MODELS:

    rule random_init_model:
        input:
            base=lambda wildcards: f"results/{RANDOM_INIT_MODELS[wildcards.model].location}/model/manifest.json",
        output:
            "results/{model}/model/manifest.json",
        log:
            "logs/random_init_model/{model}.log",
        wildcard_constraints:
            model="|".join(RANDOM_INIT_MODELS),
        params:
            base=lambda wildcards: RANDOM_INIT_MODELS[wildcards.model].location,
            seed=config["seed"],
        threads: THREADS
        resources:
            mem_mb=lambda wildcards: random_init_mem_mb(wildcards.model),
            runtime=30,
        conda:
            ENV
        script:
            "../workflow/scripts/random_init_model.py"


rule summary:
    localrule: True
    input:
        unpack(summary_inputs),
    output:
        json="results/{model}/summary.json",
        md=report(
            "results/{model}/summary.md",
            caption="../workflow/report/summary.rst",
            category="Summary",
            labels={"model": "{model}"},
        ),
    log:
        "logs/summary/{model}.log",
    wildcard_constraints:
        model="|".join(MODELS),
    params:
        sites=SITES,
        pair=FILTER_PAIR,
        layers=lambda wildcards: layers_of(wildcards.model),
        uncertainty=canonical(config["uncertainty"]),
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/summary.py"


rule summaries:
    input:
        expand("results/{model}/summary.md", model=MODELS),
