rule plot_fig1:
    localrule: True
    input:
        tables=expand("results/{{model}}/probes/{task}/{{site}}/unfiltered.csv", task=TASKS),
        random_init=lambda wildcards: expand(
            "results/{model}/probes/{task}/{site}/unfiltered.csv",
            model=[random_init_id(wildcards.model)] if random_init_id(wildcards.model) in RANDOM_INIT_MODELS else [],
            task=TASKS,
            site=wildcards.site,
        ),
    output:
        png=report(
            "results/{model}/figures/fig1_{site}.png",
            caption="../workflow/report/fig1.rst",
            category="Figure 1: probes",
            labels={"model": "{model}", "site": "{site}"},
        ),
        pdf="results/{model}/figures/fig1_{site}.pdf",
        csv="results/{model}/figures/fig1_{site}.csv",
    log:
        "logs/plot_fig1/{model}/{site}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/plot_fig1.py"


rule plot_fig2:
    localrule: True
    input:
        xi=f"results/{{model}}/xi/{'-'.join(FILTER_PAIR)}.safetensors",
    output:
        png=report(
            "results/{model}/figures/fig2_{site}.png",
            caption="../workflow/report/fig2.rst",
            category="Figure 2: rank differences",
            labels={"model": "{model}", "site": "{site}"},
        ),
        pdf="results/{model}/figures/fig2_{site}.pdf",
        csv="results/{model}/figures/fig2_{site}.csv",
    log:
        "logs/plot_fig2/{model}/{site}.log",
    params:
        layers=lambda wildcards: layers_of(wildcards.model),
        pair=FILTER_PAIR,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/plot_fig2.py"


rule plot_fig3:
    localrule: True
    input:
        filtered=expand("results/{{model}}/probes/{task}/{{site}}/filtered.csv", task=FILTER_PAIR),
        unfiltered=expand("results/{{model}}/probes/{task}/{{site}}/unfiltered.csv", task=FILTER_PAIR),
    output:
        png=report(
            "results/{model}/figures/fig3_{site}.png",
            caption="../workflow/report/fig3.rst",
            category="Figure 3: 50% filtered probes",
            labels={"model": "{model}", "site": "{site}"},
        ),
        pdf="results/{model}/figures/fig3_{site}.pdf",
        csv="results/{model}/figures/fig3_{site}.csv",
        eq41="results/{model}/figures/fig3_{site}_eq41.csv",
    log:
        "logs/plot_fig3/{model}/{site}.log",
    params:
        variants=["ge0.5", "le0.5"],
        pair=FILTER_PAIR,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/plot_filtered.py"


rule plot_fig4:
    localrule: True
    input:
        filtered=expand("results/{{model}}/probes/{task}/{{site}}/filtered.csv", task=FILTER_PAIR),
        unfiltered=expand("results/{{model}}/probes/{task}/{{site}}/unfiltered.csv", task=FILTER_PAIR),
    output:
        png=report(
            "results/{model}/figures/fig4_{site}.png",
            caption="../workflow/report/fig4.rst",
            category="Figure 4: 25%/75% filtered probes",
            labels={"model": "{model}", "site": "{site}"},
        ),
        pdf="results/{model}/figures/fig4_{site}.pdf",
        csv="results/{model}/figures/fig4_{site}.csv",
    log:
        "logs/plot_fig4/{model}/{site}.log",
    params:
        variants=["ge0.25", "le0.75"],
        pair=FILTER_PAIR,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/plot_filtered.py"


rule fig1:
    input:
        expand("results/{model}/figures/fig1_{site}.pdf", model=MODELS, site=SITES),


rule fig2:
    input:
        expand("results/{model}/figures/fig2_{site}.pdf", model=MODELS, site=SITES),


rule fig3:
    input:
        expand("results/{model}/figures/fig3_{site}.pdf", model=MODELS, site=SITES),


rule fig4:
    input:
        expand("results/{model}/figures/fig4_{site}.pdf", model=MODELS, site=SITES),


rule plot_fig5:
    localrule: True
    input:
        counts="results/{model}/patching/{site}.csv",
        accuracy="results/{model}/patching/{site}_accuracy.csv",
    output:
        png=report(
            "results/{model}/figures/fig5_{site}.png",
            caption="../workflow/report/fig5.rst",
            category="Figure 5: activation patching",
            labels={"model": "{model}", "site": "{site}"},
        ),
        pdf="results/{model}/figures/fig5_{site}.pdf",
        csv="results/{model}/figures/fig5_{site}.csv",
    log:
        "logs/plot_fig5/{model}/{site}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/plot_fig5.py"


rule fig5:
    input:
        expand("results/{model}/figures/fig5_{site}.pdf", model=MODELS, site=SITES),
