# Rank differences (§4.2.2, eq. 34): xi = rank(FA_task1) - rank(FA_task2) per (site, layer).
rule rank_difference:
    input:
        unpack(lambda wildcards: PLAN.rank_difference_inputs(wildcards.model, wildcards.pair)),
        layer_count=layer_count_known,
    output:
        paths.xi_map(),
    log:
        paths.log("rank_difference", "{model}", "{pair}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        seed=config["seed"],
        sites=PLAN.sites,
        layers=lambda wildcards: known_model(wildcards).layers,
    script:
        "../workflow/scripts/rank_difference.py"
