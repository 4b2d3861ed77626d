# Head-level views (config key `heads`, issue 10; minormech/heads.py): per (layer, query
# head) the log-probability increase, knockouts and attention to the examples' answers,
# from one job per (model, task); xi summed per head; one figure target each.

rule head_views:
    input:
        model=model_manifest,
        prompts=prompt_input("attribution"),
    output:
        heads="results/{model}/heads/{task}.csv",
        attention="results/{model}/heads/{task}_attention.csv",
    log:
        "logs/head_views/{model}/{task}.log",
    wildcard_constraints:
        model="|".join(MODELS),
    params:
        layers=lambda wildcards: layers_of(wildcards.model),
        heads=canonical(config["heads"]),
        uncertainty=canonical(config["uncertainty"]),
        seed=config["seed"],
        device=config["compute"]["device"],
        dtype=config["compute"]["dtype"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPUS,
    conda:
        ENV
    script:
        "../workflow/scripts/head_views.py"


rule head_xi:
    localrule: True
    input:
        model=model_manifest,
        xi=f"results/{{model}}/xi/{'-'.join(FILTER_PAIR)}.safetensors",
    output:
        "results/{model}/heads/xi.csv",
    log:
        "logs/head_xi/{model}.log",
    wildcard_constraints:
        model="|".join(MODELS),
    params:
        sites=SITES,
        layers=lambda wildcards: layers_of(wildcards.model),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/head_xi.py"


rule plot_heads:
    localrule: True
    input:
        unpack(head_figure_inputs),
    output:
        png=report(
            "results/{model}/figures/{figure}.png",
            caption="../workflow/report/heads.rst",
            category="Head-level views",
            labels={"model": "{model}", "figure": "{figure}"},
        ),
        pdf="results/{model}/figures/{figure}.pdf",
        csv="results/{model}/figures/{figure}.csv",
    log:
        "logs/plot_heads/{model}/{figure}.log",
    wildcard_constraints:
        model="|".join(MODELS),
        figure="|".join(HEAD_FIGURES),
    params:
        pair=FILTER_PAIR,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/plot_heads.py"


rule heads:
    input:
        expand("results/{model}/figures/{figure}.pdf", model=MODELS, figure=HEAD_FIGURES) if config["heads"]["enabled"] else [],
