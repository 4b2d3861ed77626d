# Local: on a cluster it runs on the login node, which can reach the model hub when compute
# nodes cannot; the GPU rules then load what it prepared.
rule prepare_model:
    localrule: True
    output:
        "results/{model}/model/manifest.json",
    log:
        "logs/prepare_model/{model}.log",
    params:
        entry=lambda wildcards: canonical(next(e for e in config["models"] if e["id"] == wildcards.model)),
        cache_dir=config["model_cache"],
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    script:
        "../workflow/scripts/prepare_model.py"
