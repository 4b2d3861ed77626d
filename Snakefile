# minormech: "Minor Mathematical Mechanisms in Large Language Models" (Sutter), from task
# datasets to the paper's figures. One rule file per stage, named after it; the run plan
# (minormech.plan, built in rules/common.smk) says which models and targets a config has.
include: "rules/common.smk"


report: "workflow/report/workflow.rst"


include: "rules/datasets.smk"
include: "rules/models.smk"
include: "rules/prompts.smk"
include: "rules/activations.smk"
include: "rules/probes.smk"
include: "rules/attribution.smk"
include: "rules/ranking.smk"
include: "rules/patching.smk"
include: "rules/heads.smk"
include: "rules/summary.smk"
include: "rules/figures.smk"


rule all:
    default_target: True
    input:
        rules.fig1.input,
        rules.fig2.input,
        rules.fig3.input,
        rules.fig4.input,
        rules.fig5.input,
        rules.summaries.input,
        rules.heads.input,
