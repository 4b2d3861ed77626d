"""Draw the random-init control of one model (minormech.random_init) and write its manifest."""
from pathlib import Path

from minormech.models import ModelManifest, set_threads
from minormech.random_init import prepare_random_init
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
set_threads(snakemake.threads)
manifest_path = Path(snakemake.output[0])
manifest = prepare_random_init(ModelManifest.read(snakemake.input.base), manifest_path.parent, snakemake.params.seed)
manifest.write(manifest_path)
log.info("random-init control %s of %s (seed %d): %d layers, widths %s", manifest.id, snakemake.params.base, snakemake.params.seed, manifest.num_layers, manifest.site_widths)
