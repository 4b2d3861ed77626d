# Local: on a cluster it runs on the login node, which can reach the model hub when compute
# nodes cannot; the GPU rules then load what it prepared.
rule prepare_model:
    localrule: True
    output:
        "results/{model}/model/manifest.json",
    log:
        "logs/prepare_model/{model}.log",
    wildcard_constraints:
        model="|".join(PREPARED_MODELS),
    params:
        entry=lambda wildcards: canonical(model_entry(wildcards.model)),
        cache_dir=config["model_cache"],
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    script:
        "../workflow/scripts/prepare_model.py"


# Trains on prompts of every configured task, weights from their training splits only.
rule train_control_model:
    input:
        datasets=expand("results/datasets/{task}.tsv", task=TASKS),
        tokenizer=lambda wildcards: f"results/{MODELS[wildcards.model].location}/model/manifest.json",
    output:
        manifest="results/{model}/model/manifest.json",
        training="results/{model}/model/training.json",
    log:
        "logs/train_control_model/{model}.log",
    wildcard_constraints:
        model="|".join(TRAINED_MODELS) or "(?!)",
    params:
        train=lambda wildcards: canonical(model_entry(wildcards.model)["train"]),
        tasks=TASKS,
        max_prompt_tokens=config["prompts"]["max_prompt_tokens"],
        device=config["compute"]["device"],
        dtype=config["compute"]["dtype"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPUS,
    conda:
        ENV
    script:
        "../workflow/scripts/train_control_model.py"
