rule prompts:
    input:
        dataset=paths.dataset(),
        model=paths.manifest(),
    output:
        paths.prompt_file(),
    log:
        paths.log("prompts", "{model}", "{task}", "{prompt_set}"),
    params:
        seed=config["seed"],
        max_prompt_tokens=config["prompts"]["max_prompt_tokens"],
        n_prompts=lambda wildcards: PLAN.prompt_count(wildcards.prompt_set),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow/scripts/prompts.py"
