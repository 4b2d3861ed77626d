rule plot_fig1:
    input:
        tables=expand("results/{{model}}/probes/{task}/{{site}}/unfiltered.csv", task=TASKS),
    output:
        png=report(
            "results/{model}/figures/fig1_{site}.png",
            caption="../workflow/report/fig1.rst",
            category="Figure 1: probes",
            subcategory="{model}",
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


rule fig1:
    input:
        expand("results/{model}/figures/fig1_{site}.pdf", model=MODELS, site=SITES),
