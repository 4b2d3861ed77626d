rule prompts:
    input:
        dataset="results/datasets/{task}.tsv",
        model=model_manifest,
    output:
        "results/{model}/prompts/{task}/{prompt_set}.jsonl",
    log:
        "logs/prompts/{model}/{task}/{prompt_set}.log",
    params:
        seed=config["seed"],
        max_prompt_tokens=config["prompts"]["max_prompt_tokens"],
        n_prompts=lambda wildcards: prompt_count(wildcards.prompt_set),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow/scripts/prompts.py"
