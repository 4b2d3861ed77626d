"""Download a hub model into the model cache and record where it is (minormech.models)."""

import json

from minormech.models import download_hub_model, resolve_model_spec
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
spec = resolve_model_spec(snakemake.params.entry)
load_from = download_hub_model(spec, snakemake.params.cache_dir)
with open(snakemake.output[0], "w") as handle:
    json.dump({"id": spec.id, "hub": spec.location, "load_from": load_from}, handle, indent=2)
log.info("model %s: %s downloaded to %s", spec.id, spec.location, load_from)
