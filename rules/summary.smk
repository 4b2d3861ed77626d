# What the figures show, with every number's interval, headline first: results/{model}/summary.{json,md,rst}
# (the .rst is what `snakemake --report` shows inline, through its caption).
rule summary:
    input:
        lambda wildcards: PLAN.summary_input_list(wildcards.model),
        layer_count=layer_count_known,
    output:
        json=paths.summary(ext="json"),
        md=paths.summary(),
        rst=report(
            paths.summary(ext="rst"),
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
        layers=lambda wildcards: known_model(wildcards).layers,
        bootstrap=PLAN.bootstrap,
    script:
        "../workflow/scripts/summary.py"


onsuccess:
    # After a run (never a dry run): where each model's summary and figures are, and the headline.
    for model_id in PLAN.analysed:
        for line in findings_on_screen(
            Path(paths.summary(model_id, "json")), PLAN.summary_input_list(model_id), paths.figure_dir(model_id)
        ):
            print(line)
