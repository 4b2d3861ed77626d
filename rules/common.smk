# Shared by every stage file: config validation, the run plan (minormech.plan: which models a
# run has, which stages each gets, every output path), wildcard constraints and the storage
# check. Rules always exist; the plan decides which targets a config asks for.
import os
import shutil
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)  # the minormech package, also without `pip install -e .`
# Rule scripts import it from here too, whatever Python runs them: jobs inherit PYTHONPATH (SLURM
# jobs too, which also parse this file again). With --sdm conda this is how jobs get the package:
# conda builds envs/minormech.yaml from Snakemake's copy under .snakemake/conda/, so a relative
# path in its pip section would point there, and an environment with one checkout installed would
# serve every checkout that shares its --conda-prefix; the environment holds third-party pins only.
# (Set with update(): Snakemake's linter takes an indexed os.environ for a variable the user must set.)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        dict.fromkeys([workflow.basedir, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    )
)

from minormech import plan as paths
from minormech.config import ConfigError, check_config_file, config_warnings, load_schema, validate_config
from minormech.plan import HEAD_FIGURES, RunPlan
from minormech.probe_results import PROBE_KINDS
from minormech.prompts import PROMPT_SETS
from minormech.ranking import FIGURE_VARIANTS
from minormech.storage import format_plan, free_disk_problem, planned_bytes
from minormech.summary_report import findings_on_screen


configfile: "config/config.yaml"


# Nothing is written outside the working directory except caches the user placed: matplotlib
# would keep its font cache in ~/.cache/matplotlib, so unless MPLCONFIGDIR is set it goes
# under .snakemake/ here (jobs, local or SLURM, inherit this environment).
os.environ.setdefault("MPLCONFIGDIR", str(Path(".snakemake/matplotlib").resolve()))
# Jobs report progress as plain lines (minormech.runlog.progress); the hub's and transformers'
# carriage-return bars ("Loading weights ...") would fill their logs. Set it to 0 to see them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


try:
    for config_file in workflow.configfiles:  # the default's and every --configfile, as written
        check_config_file(config_file)
    validate_config(config, load_schema(workflow.source_path("../config/config.schema.yaml")))
    PLAN = RunPlan.from_config(config)
except ConfigError as error:
    sys.exit(f"config error: {error}")
for warning in config_warnings(config, os.cpu_count()) if workflow.is_main_process else []:
    print(warning, file=sys.stderr)


def planned_shard_bytes():
    """Print the storage plan; stop when the shards this run writes exceed
    storage.limit_gb. Returns their total over the models whose sizes are known (the plan
    names the others)."""
    planned, _unknown = planned_bytes(list(PLAN.storage), PLAN.test_shards_needed)
    print(format_plan(list(PLAN.storage), config), file=sys.stderr)
    if planned > config["storage"]["limit_gb"] * 1e9:
        shard_mode = any(plan.source == "shards" for plan in PLAN.storage)
        remedy = (
            "set probe.source: stream (or auto), "
            if shard_mode
            else "use another attribution.method than expected_gradients, "
        )
        sys.exit(
            f"storage error: the configured shards need about {planned / 1e9:,.0f} GB, more than "
            f"storage.limit_gb={config['storage']['limit_gb']}; {remedy}restrict sites/layers/prompts, or raise the limit"
        )
    return planned


PLANNED_BYTES = planned_shard_bytes() if workflow.is_main_process else 0


onstart:
    # Runs before the first job of a real run (never in a dry run): the free-disk check.
    if config["storage"]["check_free_disk"]:
        existing = sum(
            path.stat().st_size for path in Path(paths.RESULTS).glob(f"*/activations/**/*{PLAN.shard_suffix}")
        )
        Path(paths.RESULTS).mkdir(exist_ok=True)
        problem = free_disk_problem(PLANNED_BYTES - existing, shutil.disk_usage(paths.RESULTS).free)
        if problem:
            sys.exit(problem)


ENV = "../envs/minormech.yaml"
THREADS = config["compute"]["threads"]


wildcard_constraints:
    model=PLAN.model_regex(),
    task="|".join(PLAN.tasks),
    site="|".join(PLAN.sites),
    prompt_set="|".join(PROMPT_SETS),
    chunk=r"\d{3}",
    pair="|".join(PLAN.pairs),
    probe_kind="|".join(PROBE_KINDS),
    figure="|".join(HEAD_FIGURES),


def canonical(value):
    """A config section with its keys sorted at every level. Snakemake reruns a job when the
    text of its params changes, and a dict's text follows its key order: without this, a
    config rewritten with keys in another order (yaml.safe_dump sorts them) would rerun
    every GPU job whose params hold a section."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def layer_count_known(wildcards):
    """Input of the rules whose params name a model's layers; nothing when the plan knows
    them. With `layers: all`, a hub model whose config.json is not yet in the model cache
    learns its layer count from checkpoint download_model: its jobs (and its random-init
    control's) wait for the download, after which the plan reads the count and Snakemake
    re-evaluates what depends on it, so a dry run plans the download and what follows."""
    hub = PLAN.depth_pending(wildcards.model)
    if hub is None:
        return []
    record = checkpoints.download_model.get(model=hub).output[0]
    try:
        PLAN.learn_depth(hub)
    except ConfigError as error:  # Snakemake swallows the text of a SystemExit raised here
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(1)
    return [record]


def known_model(wildcards):
    """The plan's row of a job's model, its layers known: what params that name layers read
    (Snakemake evaluates params while it builds the DAG, before a checkpoint has run; until
    download_model has, this defers them, which needs layer_count_known among the inputs)."""
    layer_count_known(wildcards)
    return PLAN.known(wildcards.model)


def model_job(working_mb, runtime, ridge=False):
    """Resources of a job that runs a model: its memory (the model's own, from the plan,
    plus `working_mb` for the job's data and, for a probe job (`ridge`), the ridge
    readouts' training vectors) and minutes, and one GPU when the config computes on CUDA
    (the SLURM executor turns `gpu` into --gpus; slurm/partitions.yaml routes it)."""
    return {
        "mem_mb": lambda wildcards: PLAN.job_mem_mb(
            wildcards.model, working_mb + (PLAN.ridge_mb(wildcards.model) if ridge else 0)
        ),
        "runtime": runtime,
        "gpu": PLAN.gpus,
    }


def figure_outputs(name, caption, category, labels):
    """A figure's PNG (registered for `snakemake --report`), PDF and CSV of its numbers."""
    return {
        "png": report(
            paths.figure("{model}", name, "png"),
            caption=f"../workflow/report/{caption}.rst",
            category=category,
            labels={"model": "{model}", **labels},
        ),
        "pdf": paths.figure("{model}", name, "pdf"),
        "csv": paths.figure("{model}", name, "csv"),
    }
