# What the figures show, with every number's interval: results/{model}/summary.{json,md}.
rule summary:
    input:
        lambda wildcards: PLAN.summary_input_list(wildcards.model),
    output:
        json=paths.summary(ext="json"),
        md=report(
            paths.summary(),
            caption="../workflow/report/summary.rst",
            category="Summary",
            labels={"model": "{model}"},
        ),
    log:
        paths.log("summary", "{model}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        files=lambda wildcards: PLAN.summary_files(wildcards.model),
        sites=PLAN.sites,
        pair=PLAN.filter_pair,
        layers=lambda wildcards: PLAN.model(wildcards.model).layers,
        bootstrap=PLAN.bootstrap,
    script:
        "../workflow/scripts/summary.py"
