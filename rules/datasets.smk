rule task_dataset:
    output:
        paths.dataset(),
    log:
        paths.log("task_dataset", "{task}"),
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        seed=config["seed"],
        test_weights=config["test_weights"],
    script:
        "../workflow/scripts/task_dataset.py"
