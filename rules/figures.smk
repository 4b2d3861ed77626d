# The paper's figures (§6) and the head-level views, each a PDF and PNG with its numbers as
# a CSV beside it; one target rule per figure (fig1 ... fig5, heads) selects them.
FIGURE_JOB = {"mem_mb": 2000, "runtime": 5}


rule plot_fig1:
    input:
        unpack(lambda wildcards: PLAN.fig1_inputs(wildcards.model, wildcards.site)),
    output:
        **figure_outputs("fig1_{site}", "fig1", "Figure 1: probes", {"site": "{site}"}),
    log:
        paths.log("plot_fig1", "{model}", "{site}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        **FIGURE_JOB,
    script:
        "../workflow/scripts/plot_fig1_probes.py"


rule plot_fig2:
    input:
        xi=lambda wildcards: PLAN.xi(wildcards.model),
        layer_count=layer_count_known,
    output:
        **figure_outputs("fig2_{site}", "fig2", "Figure 2: rank differences", {"site": "{site}"}),
    log:
        paths.log("plot_fig2", "{model}", "{site}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        **FIGURE_JOB,
    params:
        layers=lambda wildcards: known_model(wildcards).layers,
        pair=PLAN.filter_pair,
        head_size=lambda wildcards: PLAN.head_size(wildcards.model),
    script:
        "../workflow/scripts/plot_fig2_xi.py"


rule plot_fig3:
    input:
        unpack(lambda wildcards: PLAN.filtered_figure_inputs(wildcards.model, wildcards.site)),
    output:
        **figure_outputs("fig3_{site}", "fig3", "Figure 3: 50% filtered probes", {"site": "{site}"}),
        eq41=paths.figure("{model}", "fig3_{site}_eq41", "csv"),
    log:
        paths.log("plot_fig3", "{model}", "{site}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        **FIGURE_JOB,
    params:
        variants=FIGURE_VARIANTS[3],
        pair=PLAN.filter_pair,
    script:
        "../workflow/scripts/plot_fig3_fig4_filtered.py"


use rule plot_fig3 as plot_fig4 with:
    output:
        **figure_outputs("fig4_{site}", "fig4", "Figure 4: 25%/75% filtered probes", {"site": "{site}"}),
    log:
        paths.log("plot_fig4", "{model}", "{site}"),
    params:
        variants=FIGURE_VARIANTS[4],
        pair=PLAN.filter_pair,


rule plot_fig5:
    input:
        counts=paths.patching_file(),
        accuracy=paths.patching_file(table="_accuracy"),
        inputs=paths.patching_file(table="_inputs", suffix=".json"),
    output:
        **figure_outputs("fig5_{site}", "fig5", "Figure 5: activation patching", {"site": "{site}"}),
    log:
        paths.log("plot_fig5", "{model}", "{site}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        **FIGURE_JOB,
    script:
        "../workflow/scripts/plot_fig5_patching.py"


rule plot_heads:
    input:
        tables=lambda wildcards: PLAN.head_figure_inputs(wildcards.model, wildcards.figure),
    output:
        **figure_outputs("{figure}", "heads", "Head-level views", {"figure": "{figure}"}),
    log:
        paths.log("plot_heads", "{model}", "{figure}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        **FIGURE_JOB,
    params:
        pair=PLAN.filter_pair,
    script:
        "../workflow/scripts/plot_heads.py"


rule fig1:
    input:
        PLAN.figure_targets(1),


rule fig2:
    input:
        PLAN.figure_targets(2),


rule fig3:
    input:
        PLAN.figure_targets(3),


rule fig4:
    input:
        PLAN.figure_targets(4),


rule fig5:
    input:
        PLAN.figure_targets(5),


rule heads:
    input:
        PLAN.head_targets(),


rule summaries:
    input:
        PLAN.summary_targets(),
