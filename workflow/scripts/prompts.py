"""Generate one prompt set for (model, task) (paper Algorithm 1, minormech.prompts)."""

from minormech.models import ModelManifest, load_tokenizer
from minormech.prompts import PromptRecipe, generate_prompts, prompt_weight_ids, write_prompts
from minormech.runlog import job_logger, progress
from minormech.tasks import WeightTable, get_task

log = job_logger(snakemake.log[0])
params, wildcards = snakemake.params, snakemake.wildcards
task = get_task(wildcards.task)
table = WeightTable.read_tsv(snakemake.input.dataset, task.name)
recipe = PromptRecipe(**params.recipe)
tokenizer = load_tokenizer(ModelManifest.read(snakemake.input.model))
weight_ids = prompt_weight_ids(wildcards.prompt_set, table, recipe.seed, recipe.count, recipe.train_count)
prompts = generate_prompts(
    task,
    table,
    weight_ids,
    wildcards.prompt_set,
    tokenizer,
    recipe.max_prompt_tokens,
    recipe.seed,
    progress=progress(f"{task.name} {wildcards.prompt_set} prompts"),
)
write_prompts(snakemake.output[0], prompts, recipe)
lengths = [p.length for p in prompts]
log.info(
    "%d prompts, %d-%d tokens, %.1f examples on average",
    len(prompts),
    min(lengths),
    max(lengths),
    sum(p.n_examples for p in prompts) / len(prompts),
)
