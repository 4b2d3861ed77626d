rule attribution:
    input:
        unpack(attribution_inputs),
    output:
        "results/{model}/attribution/{task}.safetensors",
    log:
        "logs/attribution/{model}/{task}.log",
    params:
        sites=SITES,
        layers=lambda wildcards: layers_of(wildcards.model),
        attribution=canonical(config["attribution"]),
        tasks=TASKS,
        seed=config["seed"],
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
        "../workflow/scripts/attribution.py"


rule rank_difference:
    localrule: True
    input:
        task1=lambda wildcards: f"results/{wildcards.model}/attribution/{wildcards.pair.split('-')[0]}.safetensors",
        task2=lambda wildcards: f"results/{wildcards.model}/attribution/{wildcards.pair.split('-')[1]}.safetensors",
    output:
        "results/{model}/xi/{pair}.safetensors",
    log:
        "logs/rank_difference/{model}/{pair}.log",
    params:
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/rank_difference.py"


rule patching:
    input:
        model=model_manifest,
        xi=f"results/{{model}}/xi/{'-'.join(FILTER_PAIR)}.safetensors",
        reference=prompt_input("patching_ref", FILTER_PAIR),
        others=prompt_input("patching", FILTER_PAIR),
    output:
        counts="results/{model}/patching/{site}.csv",
        accuracy="results/{model}/patching/{site}_accuracy.csv",
        pairs="results/{model}/patching/{site}_pairs.csv",
    log:
        "logs/patching/{model}/{site}.log",
    params:
        pair=FILTER_PAIR,
        layers=lambda wildcards: patching_layers(wildcards.model),
        patching=canonical(config["patching"]),
        controls=config["controls"]["patching"],
        uncertainty=canonical(config["uncertainty"]),
        seed=config["seed"],
        device=config["compute"]["device"],
        dtype=config["compute"]["dtype"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=480,
        gpu=GPUS,
    conda:
        ENV
    script:
        "../workflow/scripts/patching.py"
