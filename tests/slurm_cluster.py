"""A throw-away, one-node SLURM cluster on this machine, for tests that need a real scheduler.

Plain functions, no pytest:

    cluster = start_cluster(Path("/tmp/somewhere"))   # raises SlurmUnavailable(reason)
    env = {**os.environ, **cluster.env}               # SLURM_CONF for sbatch/squeue/sinfo
    ...
    stop_cluster(cluster)                             # stops only the daemons started here

Everything lives in the given directory: slurm.conf, the munge key and socket, state and
spool directories, logs and pid files. The daemons get that slurm.conf with -f, listen on
free ports chosen at start (a system slurmctld/slurmd on the default ports is no obstacle)
and authenticate through a private munged (AuthInfo=socket=... in slurm.conf), so a system
munged and its key are neither used nor touched. One global path is needed:
/etc/slurm/slurm.conf, the compiled-in default. SLURM_CONF would do for sbatch and squeue,
but snakemake-executor-plugin-slurm-jobstep 0.6.1 removes every SLURM_* variable except the
job's identity before it runs `srun` inside the job, so srun would find no configuration.
start_cluster therefore links /etc/slurm/slurm.conf to the private one, after renaming
whatever is there to slurm.conf.backup-<pid>, and stop_cluster puts it back.

What it does need: root (slurmd starts jobs as the submitting user, munged and the package
install need root), and Debian's slurm-wlm and munge packages, which it installs with
apt-get when they are missing. Jobs run as the user that submits them (root here).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
PROGRAMS = ["slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "srun", "munged", "mungekey"]
PARTITIONS = ("cpu", "gpu")  # cpu is the default; both are named as in slurm/partitions.yaml
MEMORY_MARGIN_MB = 2048  # kept free for the OS and the snakemake process that submits the jobs
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # where srun looks when SLURM_CONF is not set


class SlurmUnavailable(Exception):
    """The cluster could not be started; str(exc) is a one-line reason to skip with."""


@dataclass
class LocalCluster:
    root: Path
    conf: Path
    hostname: str
    cpus: int
    memory_mb: int
    partition: str = PARTITIONS[0]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    linked: bool = False  # SYSTEM_CONF is our symlink
    backup: Path | None = None  # where the file that was at SYSTEM_CONF went

    @property
    def env(self) -> dict[str, str]:
        """Variables that point Slurm's commands at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def log_tail(self, lines: int = 20) -> str:
        """The end of every daemon log, for failure messages."""
        out = []
        for name in ("munged", "slurmctld", "slurmd"):
            path = self.root / f"{name}.log"
            if path.exists():
                out.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def _run(cmd: list[str], timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def ensure_installed(timeout: float = 900) -> None:
    """apt-get install slurm-wlm and munge if any of their programs is missing."""
    if not missing_programs():
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            f"Slurm is not installed ({', '.join(missing_programs())} missing) and apt-get is not available"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]):
        try:
            result = _run(cmd, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"'{' '.join(cmd)}' did not finish in {timeout:.0f} s (no network?)") from None
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
            raise SlurmUnavailable(
                f"'{' '.join(cmd)}' failed with exit code {result.returncode} (no network?): {last[0]}"
            )
    if missing_programs():
        raise SlurmUnavailable(f"installed {' '.join(PACKAGES)} but still missing: {', '.join(missing_programs())}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _available_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemAvailable from /proc/meminfo")


def write_config(root: Path, hostname: str, cpus: int, memory_mb: int, fake_gpus: int = 0) -> Path:
    """slurm.conf for one node that is both controller and compute node, and two partitions
    (cpu, the default, and gpu) over that node. fake_gpus > 0 declares that many GPUs of
    type 'fake' (gres.conf maps one to /dev/null), so that sbatch --gpus=N is accepted and
    the job sees CUDA_VISIBLE_DEVICES; no real device is behind them."""
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    gres = f" Gres=gpu:fake:{fake_gpus}" if fake_gpus else ""
    if fake_gpus:
        device = "File=/dev/null" if fake_gpus == 1 else f"Count={fake_gpus}"  # one File per GPU, else no devices
        (root / "gres.conf").write_text(f"NodeName={hostname} Name=gpu Type=fake {device}\n")
    conf.write_text(
        f"""# Written by tests/slurm_cluster.py for a throw-away test cluster.
ClusterName=minormechtest
SlurmctldHost={hostname}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root / "munge" / "munge.socket"}
CredType=cred/munge
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups, no accounting database: works inside containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# finished jobs stay visible to squeue (and scontrol) for 2 hours; without accounting,
# squeue is the only way the snakemake executor learns how a job ended, and the test reads
# every job's final state after the run
MinJobAge=7200
{"GresTypes=gpu" if fake_gpus else ""}
NodeName={hostname} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
PartitionName={PARTITIONS[0]} Nodes={hostname} Default=YES MaxTime=INFINITE State=UP
PartitionName={PARTITIONS[1]} Nodes={hostname} Default=NO MaxTime=INFINITE State=UP
"""
    )
    return conf


def _link_system_conf(cluster: LocalCluster) -> None:
    """Point /etc/slurm/slurm.conf at the private slurm.conf, keeping what was there."""
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
        backup = SYSTEM_CONF.with_name(f"{SYSTEM_CONF.name}.backup-{os.getpid()}")
        SYSTEM_CONF.rename(backup)
        cluster.backup = backup
    SYSTEM_CONF.symlink_to(cluster.conf)
    cluster.linked = True


def _unlink_system_conf(cluster: LocalCluster) -> None:
    if cluster.linked and SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == cluster.conf:
        SYSTEM_CONF.unlink()
    cluster.linked = False
    if cluster.backup is not None and not (SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink()):
        cluster.backup.rename(SYSTEM_CONF)
        cluster.backup = None


def _start(cluster: LocalCluster, name: str, cmd: list[str]) -> None:
    log = open(cluster.root / f"{name}.out", "w")
    env = {**os.environ, **cluster.env}
    cluster.processes[name] = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    time.sleep(0.5)
    if cluster.processes[name].poll() is not None:
        out = (cluster.root / f"{name}.out").read_text(errors="replace").strip()
        raise SlurmUnavailable(
            f"{name} exited at start with code {cluster.processes[name].returncode}: {out[-300:]}\n{cluster.log_tail()}"
        )


def _start_munge(cluster: LocalCluster) -> None:
    munge = cluster.root / "munge"
    key = munge / "munge.key"
    if not key.exists():
        result = _run(["mungekey", "--create", f"--keyfile={key}"])
        if result.returncode != 0:
            raise SlurmUnavailable(f"mungekey failed: {result.stderr.strip()}")
    key.chmod(0o400)
    munge.chmod(0o755)  # the socket must be reachable; the key itself is root-only
    _start(
        cluster,
        "munged",
        [
            shutil.which("munged") or "/usr/sbin/munged",
            "--foreground",
            "--force",  # the key and socket live under /tmp (world-writable, sticky)
            f"--key-file={key}",
            f"--socket={munge / 'munge.socket'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={cluster.root / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ],
    )
    deadline = time.time() + 20
    while not (munge / "munge.socket").exists():
        if time.time() > deadline:
            raise SlurmUnavailable(f"munged did not create its socket\n{cluster.log_tail()}")
        time.sleep(0.2)


def node_state(cluster: LocalCluster) -> str:
    result = _run(
        ["sinfo", "-h", "-N", "-n", cluster.hostname, "-o", "%t"], timeout=20, env={**os.environ, **cluster.env}
    )
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""


def start_cluster(root: Path, timeout: float = 90, fake_gpus: int = 0) -> LocalCluster:
    """Install (if needed) and start munged, slurmctld and slurmd with state under root;
    returns once sinfo shows the node idle. Raises SlurmUnavailable with the reason.
    fake_gpus: see write_config."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("a local SLURM cluster needs root (to install slurm-wlm/munge and run slurmd)")
    ensure_installed()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    hostname = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory_mb = _available_memory_mb() - MEMORY_MARGIN_MB
    if memory_mb < 1024:
        raise SlurmUnavailable(f"only {memory_mb + MEMORY_MARGIN_MB} MB of memory available")
    cluster = LocalCluster(
        root=root,
        conf=write_config(root, hostname, cpus, memory_mb, fake_gpus),
        hostname=hostname,
        cpus=cpus,
        memory_mb=memory_mb,
    )
    try:
        _link_system_conf(cluster)
        _start_munge(cluster)
        # -D: stay in the foreground, so the pid we hold is the daemon's; -i/-c: fresh state
        _start(
            cluster,
            "slurmctld",
            [shutil.which("slurmctld") or "/usr/sbin/slurmctld", "-D", "-c", "-i", "-f", str(cluster.conf)],
        )
        _start(
            cluster,
            "slurmd",
            [shutil.which("slurmd") or "/usr/sbin/slurmd", "-D", "-f", str(cluster.conf), "-N", hostname],
        )
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            state = node_state(cluster)
            if state == "idle":
                return cluster
            for name, process in cluster.processes.items():
                if process.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with code {process.returncode}\n{cluster.log_tail()}")
            time.sleep(1)
        raise SlurmUnavailable(
            f"node {hostname} not idle after {timeout:.0f} s (state: {state or 'unknown'})\n{cluster.log_tail()}"
        )
    except BaseException:
        stop_cluster(cluster)
        raise


def stop_cluster(cluster: LocalCluster, timeout: float = 20) -> None:
    """Stop the daemons this module started (by their pids), newest first, and restore
    /etc/slurm/slurm.conf; cancel leftover jobs first so that no job outlives its slurmd."""
    if cluster.processes.get("slurmctld") and cluster.processes["slurmctld"].poll() is None:
        try:
            _run(
                ["scancel", "--full", "--partition", ",".join(PARTITIONS)],
                timeout=10,
                env={**os.environ, **cluster.env},
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
    for name in ("slurmd", "slurmctld", "munged"):
        process = cluster.processes.pop(name, None)
        if process is None or process.poll() is not None:
            continue
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    _unlink_system_conf(cluster)
