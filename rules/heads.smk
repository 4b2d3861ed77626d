# Head-level views (config key `heads`; minormech.heads): per (layer, query head) the
# log-probability increase, knockouts and attention to the examples' answers, from one job
# per (model, task); xi summed per head; one figure each (rule plot_heads in figures.smk).
rule head_views:
    input:
        model=paths.manifest(),
        prompts=lambda wildcards: PLAN.prompts(wildcards.model, wildcards.task, "attribution"),
        layer_count=layer_count_known,
    output:
        heads=paths.head_table(),
        attention=paths.head_table(table="_attention"),
    log:
        paths.log("head_views", "{model}", "{task}"),
    benchmark:
        paths.benchmark("head_views", "{model}", "{task}")
    conda:
        ENV
    threads: THREADS
    resources:
        **model_job(working_mb=4000, runtime=240),
    params:
        layers=lambda wildcards: known_model(wildcards).layers,
        knockout_layers=lambda wildcards: known_model(wildcards).knockout_layers,
        heads=canonical(config["heads"]),
        bootstrap=PLAN.bootstrap,
        prompt_recipe=PLAN.prompt_recipe("attribution"),
        compute=PLAN.compute,
    script:
        "../workflow/scripts/head_views.py"


rule head_xi:
    input:
        model=paths.manifest(),
        xi=lambda wildcards: PLAN.xi(wildcards.model),
        layer_count=layer_count_known,
    output:
        paths.head_table(task="xi"),
    log:
        paths.log("head_xi", "{model}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        sites=PLAN.sites,
        layers=lambda wildcards: known_model(wildcards).layers,
    script:
        "../workflow/scripts/head_xi.py"
