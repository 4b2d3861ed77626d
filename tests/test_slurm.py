"""The tiny DAG through `snakemake --profile slurm` on a real (one-node, local) SLURM cluster.

tests/slurm_cluster.py installs Debian's slurm-wlm and munge when they are missing (root
only) and starts munged, slurmctld and slurmd with everything under a temporary directory;
the test is skipped, with the reason, when that is not possible. The workflow and the
profile are copied as a fresh clone would have them and slurm/config.yaml is used as a user
would use it; only settings of this particular cluster come from the command line:
squeue as the status command (the test cluster has no accounting database, so no sacct),
SLURM logs of successful jobs kept (to check them), and a short first status check (a
speed-up), and 8 jobs at a time (the node runs one 2-core job at once; the others wait in
SLURM's queue, which starts the next as soon as one ends, not at Snakemake's next status
check). The profile's partition file is used as it is: the test cluster's partitions are
named as in slurm/partitions.yaml, `cpu` (the default) and `gpu`, and its node declares one
GPU (a fake one, behind /dev/null), so that a job asking for a GPU can be placed. The tiny DAG
computes on the CPU, so none of its jobs asks for a GPU and all of them must run in `cpu`; a
two-rule workflow, one rule asking for a GPU, shows that such a job goes to `gpu`.
Takes 6-8 minutes on 2 cores.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import slurm_cluster
import yaml
from workflow_helpers import TINY

pytestmark = pytest.mark.slurm

MODEL = "results/smollm2-135m"
#: Rules that run a model (the tiny config keeps shards, so no stream_probes): never local.
MODEL_RULES = {"activations", "attribution", "head_views", "patching", "probe"}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        started = slurm_cluster.start_cluster(tmp_path_factory.mktemp("slurm"), fake_gpus=1)
    except slurm_cluster.SlurmUnavailable as reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    yield started
    slurm_cluster.stop_cluster(started)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, repo_root, smollm2_manifest):
    work = tmp_path_factory.mktemp("slurm_workflow")
    for name in ("Snakefile", "rules", "workflow", "config", "envs", "minormech", "slurm"):
        source = repo_root / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, work / name)
    # The model's manifest is the session's prepared model (the GGUF conversion the model
    # rule does, tests/test_workflow.py runs it): it spares a ~40 s job and the status-check
    # wait after it, on the critical path of every other job.
    (work / MODEL / "model").mkdir(parents=True)
    smollm2_manifest.write(work / MODEL / "model" / "manifest.json")
    # One site, one shard per prompt set, one patched layer, no knockouts and no random-init
    # control or patching controls: fewer and shorter SLURM jobs (the rules left out are CPU
    # or GPU rules like the others; tests/test_workflow.py runs them).
    controls = {"least_squares": True, "control_task": True, "random_init": False, "patching": False}
    small = {
        **TINY,
        "sites": ["k"],
        "controls": controls,
        "patching": {**TINY["patching"], "layers": [29]},
        "heads": {**TINY["heads"], "knockout": False},
        "activations": {**TINY["activations"], "chunks": {"probe_train": 1, "probe_test": 1, "probe_control": 1}},
    }
    (work / "tiny.yaml").write_text(yaml.safe_dump(small))
    # The jobs inherit this environment (the plugin submits with sbatch --export=ALL):
    # SLURM_CONF finds the test cluster, PATH the virtual environment's programs, and
    # PYTHONPATH makes the jobs' scripts import the copied minormech, not the editable install.
    env = {
        **os.environ,
        **cluster.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")])),
    }
    output = run_with_profile(work, env, cluster, "--configfile", "tiny.yaml")
    return work, output, env


def run_with_profile(work: Path, env: dict, cluster, *args: str) -> str:
    """`snakemake --profile slurm` in work, with only what this test cluster needs added."""
    command = [
        sys.executable, "-m", "snakemake",
        "--profile", "slurm",
        *args,
        "--jobs", "8",
        "--slurm-status-command", "squeue",
        "--slurm-keep-successful-logs",
        "--slurm-init-seconds-before-status-checks", "5",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=3000)
    output = result.stdout + result.stderr
    (work / "snakemake.out").write_text(output)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}\n{cluster.log_tail()}"
    return output


def squeue(env, job_ids):
    """{slurm job id: (state, partition)} of finished and running jobs (the test cluster's
    MinJobAge keeps finished jobs for 2 hours)."""
    result = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%P", "--jobs", ",".join(job_ids)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {i: (state, partition) for i, state, partition in (line.split("|") for line in result.stdout.split())}


def test_every_job_with_work_ran_as_a_slurm_job(slurm_run):
    work, output, env = slurm_run
    # Snakemake prints "rule NAME:" for a job it submits and "localrule NAME:" for one it
    # runs itself (target rules such as `all`, rules marked local).
    remote_jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)$", output, re.MULTILINE)
    submitted = {jobid: (slurm_id, Path(log)) for jobid, slurm_id, log in SUBMITTED.findall(output)}
    assert remote_jobs, output[-3000:]
    assert {jobid for _, jobid in remote_jobs} == set(submitted), output[-3000:]
    # which light rules run locally is the workflow's choice; the model-running rules never do
    assert MODEL_RULES <= {rule for rule, _ in remote_jobs}, remote_jobs

    states = squeue(env, [slurm_id for slurm_id, _ in submitted.values()])
    for rule, jobid in remote_jobs:
        slurm_id, log = submitted[jobid]
        assert states[slurm_id][0] == "COMPLETED", (rule, slurm_id, states[slurm_id])
        # a CPU run asks for no GPU, so the partition file sends every job to `cpu`
        assert states[slurm_id][1] == "cpu", (rule, states[slurm_id])
        # and the SLURM log goes to logs/slurm/rule_<rule>/<wildcards>/<slurm id>.log
        assert log.is_relative_to(work / "logs" / "slurm" / f"rule_{rule}") and log.name == f"{slurm_id}.log", log
        assert log.stat().st_size > 0


def test_jobs_run_the_virtual_environments_python(slurm_run, cluster):
    work, output, env = slurm_run
    slurm_id = SUBMITTED.findall(output)[-1][1]
    script = subprocess.run(
        ["scontrol", "write", "batch_script", slurm_id, "-"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f"{sys.executable} -m snakemake" in script, script


def test_figures_exist(slurm_run):
    work, _, _ = slurm_run
    figures = work / MODEL / "figures"
    for number in range(1, 6):
        assert (figures / f"fig{number}_k.pdf").stat().st_size > 0


#: A workflow of one rule that asks for a GPU and one that does not; each writes the GPUs
#: SLURM gave it.
ROUTING_SNAKEFILE = """
rule all:
    input: "gpu.txt", "cpu.txt"
    localrule: True

rule asks_for_a_gpu:
    output: "gpu.txt"
    resources: gpu=1, mem_mb=100, runtime=5
    shell: "echo ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"

rule asks_for_none:
    output: "cpu.txt"
    resources: gpu=0, mem_mb=100, runtime=5
    shell: "echo ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"
"""


def test_the_partition_file_sends_a_job_that_asks_for_a_gpu_to_the_gpu_partition(
    slurm_run, cluster, tmp_path, repo_root
):
    _, _, env = slurm_run
    shutil.copytree(repo_root / "slurm", tmp_path / "slurm")
    (tmp_path / "Snakefile").write_text(ROUTING_SNAKEFILE)
    output = run_with_profile(tmp_path, env, cluster)
    jobs = dict(re.findall(r"^rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)$", output, re.MULTILINE))
    slurm_ids = {jobid: slurm_id for jobid, slurm_id, _ in SUBMITTED.findall(output)}
    partitions = {rule: squeue(env, [slurm_ids[jobid]])[slurm_ids[jobid]][1] for rule, jobid in jobs.items()}
    assert partitions == {"asks_for_a_gpu": "gpu", "asks_for_none": "cpu"}, (partitions, output[-3000:])
    assert (tmp_path / "gpu.txt").read_text().strip() != "none"
    assert (tmp_path / "cpu.txt").read_text().strip() == "none"
