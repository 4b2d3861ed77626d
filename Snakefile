# minormech: "Minor Mathematical Mechanisms in Large Language Models" (Sutter), from task
# datasets to the paper's figures. Rules live in rules/, logic in the minormech package.
include: "rules/common.smk"
include: "rules/datasets.smk"
include: "rules/models.smk"
include: "rules/prompts.smk"
include: "rules/activations.smk"
include: "rules/probes.smk"
include: "rules/attribution.smk"
include: "rules/figures.smk"
include: "rules/controls.smk"
include: "rules/heads.smk"


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
