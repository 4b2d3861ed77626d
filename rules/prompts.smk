# Tokenization only (about 8 ms per 600-token prompt: under 3 minutes of one core for the
# paper's 20000 training prompts of a task), so it runs where Snakemake runs, not as a
# cluster job that would wait in the queue for longer than it computes.
rule prompts:
    input:
        dataset=paths.dataset(),
        model=paths.manifest(),
    output:
        paths.prompt_file(),
    log:
        paths.log("prompts", "{model}", "{task}", "{prompt_set}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        recipe=lambda wildcards: PLAN.prompt_recipe(wildcards.prompt_set),
    script:
        "../workflow/scripts/prompts.py"
