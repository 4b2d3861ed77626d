"""Write D^task: every weight vector with its train/test split (paper §5.3)."""

from minormech.runlog import job_logger
from minormech.tasks import get_task, make_weight_table

log = job_logger(snakemake.log[0])
task = get_task(snakemake.wildcards.task)
table = make_weight_table(task, snakemake.params.test_weights, snakemake.params.seed)
table.write_tsv(snakemake.output[0])
log.info("%s: %d weights, %d test", task.name, len(table.weights), len(table.test_ids))
