# Activation patching (§4.3): the counts rho, dlogp and dlogit of the eight settings for the
# xi-selected patch and its controls, every patched layer of one (model, site).
rule patching:
    input:
        model=paths.manifest(),
        xi=lambda wildcards: PLAN.xi(wildcards.model),
        reference=lambda wildcards: [PLAN.prompts(wildcards.model, task, "patching_ref") for task in PLAN.filter_pair],
        others=lambda wildcards: [PLAN.prompts(wildcards.model, task, "patching") for task in PLAN.filter_pair],
        layer_count=layer_count_known,
    output:
        counts=paths.patching_file(),
        accuracy=paths.patching_file(table="_accuracy"),
        pairs=paths.patching_file(table="_pairs"),
        inputs=paths.patching_file(table="_inputs", suffix=".json"),
    log:
        paths.log("patching", "{model}", "{site}"),
    benchmark:
        paths.benchmark("patching", "{model}", "{site}")
    conda:
        ENV
    threads: THREADS
    resources:
        **model_job(working_mb=4000, runtime=480),
    params:
        pair=PLAN.filter_pair,
        layers=lambda wildcards: known_model(wildcards).patching_layers,
        patching=canonical(config["patching"]),
        controls=config["controls"]["patching"],
        bootstrap=PLAN.bootstrap,
        prompt_recipes=PLAN.prompt_recipes("patching_ref", "patching"),
        seed=config["seed"],
        compute=PLAN.compute,
    script:
        "../workflow/scripts/patching.py"
