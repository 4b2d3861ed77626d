"""Make a model loadable by later jobs and write its manifest (minormech.models)."""
from pathlib import Path

from minormech.models import prepare_model, resolve_model_spec, set_threads
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
set_threads(snakemake.threads)
spec = resolve_model_spec(snakemake.params.entry)
manifest_path = Path(snakemake.output[0])
manifest = prepare_model(spec, manifest_path.parent, snakemake.params.cache_dir)
manifest.write(manifest_path)
log.info("model %s: load from %s, %d layers, widths %s", manifest.id, manifest.load_from, manifest.num_layers, manifest.site_widths)
