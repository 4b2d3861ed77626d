rule activations:
    input:
        prompts=prompt_input(),
        model=model_manifest,
    output:
        "results/{model}/activations/{task}/{prompt_set}/chunk{chunk}.safetensors",
    log:
        "logs/activations/{model}/{task}/{prompt_set}/chunk{chunk}.log",
    params:
        sites=SITES,
        layers=lambda wildcards: layers_of(wildcards.model),
        n_chunks=lambda wildcards: len(chunk_names(wildcards.prompt_set)),
        batch_size=config["activations"]["batch_size"],
        store_dtype=config["activations"]["store_dtype"],
        device=config["compute"]["device"],
        dtype=config["compute"]["dtype"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPUS,
    conda:
        ENV
    script:
        "../workflow/scripts/activations.py"
