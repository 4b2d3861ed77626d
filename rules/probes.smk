rule probe:
    input:
        unpack(probe_inputs),
    output:
        table="results/{model}/probes/{task}/{site}/{probe_kind}.csv",
        predictions="results/{model}/probes/{task}/{site}/{probe_kind}_predictions.safetensors",
        summary="results/{model}/probes/{task}/{site}/{probe_kind}.json",
    log:
        "logs/probe/{model}/{task}/{site}/{probe_kind}.log",
    params:
        layers=lambda wildcards: layers_of(wildcards.model),
        probe=canonical(config["probe"]),
        device=config["compute"]["device"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPUS,
    conda:
        ENV
    script:
        "../workflow/scripts/probe.py"
