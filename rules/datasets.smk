rule task_dataset:
    localrule: True
    output:
        paths.dataset(),
    log:
        paths.log("task_dataset", "{task}"),
    params:
        seed=config["seed"],
        test_weights=config["test_weights"],
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/task_dataset.py"
