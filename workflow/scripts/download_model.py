"""Download a hub model into the model cache and record where it is and at which commit
(minormech.models)."""

import json

from minormech.models import download_hub_model, resolve_model_spec, snapshot_commit
from minormech.runlog import job_logger

log = job_logger(snakemake.log[0])
spec = resolve_model_spec(snakemake.params.entry)
load_from = download_hub_model(spec, snakemake.params.cache_dir)
record = {
    "id": spec.id,
    "hub": spec.location,
    "revision": spec.revision,
    "commit": snapshot_commit(load_from),
    "load_from": load_from,
}
with open(snakemake.output[0], "w") as handle:
    json.dump(record, handle, indent=2)
log.info("model %s: %s at commit %s downloaded to %s", spec.id, spec.location, record["commit"], load_from)
