"""Where runs execute: submitit's ``debug`` (this process), ``local`` (subprocesses on this machine) or
``slurm`` with a cluster profile from ``slurm/clusters.toml``."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import tomllib

from repnext.errors import RepnextError

from . import SLURM

CLUSTERS = ("debug", "local", "slurm")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # local jobs are not scheduled: the limit only guards against a hang


class ClusterError(RepnextError):
    pass


@dataclass(frozen=True)
class SlurmProfile:
    name: str
    partition: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float = 0           # per node (sbatch --mem); 0: not set
    mem_per_cpu_gb: float = 0   # per CPU (sbatch --mem-per-cpu); 0: not set. At most one of the two
    timeout_min: int = 60
    account: str = ""
    qos: str = ""
    signal_delay_s: int = 90
    max_num_timeout: int = 3
    sbatch: dict = field(default_factory=dict)

    def replace(self, **changes) -> SlurmProfile:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def mem_per_task_gb(self) -> float | None:
        """Host memory each rank gets, or None when the partition's default decides."""
        if self.mem_per_cpu_gb:
            return self.mem_per_cpu_gb * self.cpus_per_task
        return self.mem_gb / self.tasks_per_node if self.mem_gb else None

    def check(self) -> None:
        """One-line errors for shapes sbatch would accept and then run wrong (or reject obscurely)."""
        for key in ("nodes", "tasks_per_node", "cpus_per_task"):
            if getattr(self, key) < 1:
                raise ClusterError(f"SLURM profile {self.name!r}: {key} must be at least 1, got {getattr(self, key)}")
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ClusterError(f"SLURM profile {self.name!r}: tasks_per_node={self.tasks_per_node} but "
                               f"gpus_per_node={self.gpus_per_node}; one DDP process per GPU: make them equal")
        if self.mem_gb and self.mem_per_cpu_gb:
            raise ClusterError(f"SLURM profile {self.name!r}: mem_gb={self.mem_gb} and mem_per_cpu_gb="
                               f"{self.mem_per_cpu_gb} are exclusive in SLURM; set one of them to 0")


def slurm_profiles(path: Path = SLURM / "clusters.toml") -> dict[str, SlurmProfile]:
    data = tomllib.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(SlurmProfile)}
    for name, values in data.items():
        unknown = set(values) - names
        if unknown:
            raise ClusterError(f"{path} [{name}]: unknown key(s) {sorted(unknown)}; "
                               f"allowed: {sorted(names - {'name'})}")
    return {name: SlurmProfile(name=name, **values) for name, values in data.items()}


def get_slurm_profile(name: str) -> SlurmProfile:
    profiles = slurm_profiles()
    if name not in profiles:
        raise ClusterError(f"unknown SLURM profile {name!r}; expected one of: {', '.join(profiles)} "
                           f"(defined in {SLURM / 'clusters.toml'})")
    return profiles[name]


def slurm_partitions() -> list[str] | None:
    """The partitions the reachable SLURM controller knows, or None when there is no reachable cluster."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [p.strip().rstrip("*") for p in out.stdout.split()]


def check_slurm(profile: SlurmProfile) -> None:
    partitions = slurm_partitions()
    if partitions is None:
        raise ClusterError("no SLURM cluster is reachable (sinfo failed or is not installed); start the local "
                           "one with `bash slurm/local-up.sh` or use --cluster local")
    if profile.partition and profile.partition not in partitions:
        raise ClusterError(f"unknown partition {profile.partition!r}; this cluster has: {', '.join(partitions)} "
                           "(set --partition or the profile's partition in slurm/clusters.toml)")


def make_executor(cluster: str, folder: Path, slurm: SlurmProfile | None = None, max_parallel: int = 1,
                  tasks_per_node: int = 1, name: str = "repnext") -> submitit.Executor:
    """An executor for one table's jobs; ``folder`` should be fresh (submitit trusts result files it finds,
    and job ids repeat when a cluster's state is wiped)."""
    if cluster not in CLUSTERS:
        raise ClusterError(f"unknown cluster {cluster!r}; expected one of: {', '.join(CLUSTERS)}")
    # cluster is explicit: with srun on PATH, submitit's auto-detection would pick slurm
    extra = {"slurm_max_num_timeout": slurm.max_num_timeout} if cluster == "slurm" and slurm else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **extra)
    if cluster != "slurm":
        executor.update_parameters(**local_parameters(name, tasks_per_node))
        return executor
    if slurm is None:
        raise ClusterError("the slurm cluster needs a profile (slurm/clusters.toml)")
    slurm.check()
    executor.update_parameters(**slurm_parameters(slurm, name, max_parallel))
    return executor


def local_parameters(name: str = "repnext", tasks_per_node: int = 1) -> dict:
    """What submitit's local and debug executors are given."""
    return dict(name=name, timeout_min=LOCAL_TIMEOUT_MIN, tasks_per_node=tasks_per_node)


def slurm_parameters(slurm: SlurmProfile, name: str = "repnext", max_parallel: int = 256) -> dict:
    """What submitit's SlurmExecutor is given for a profile (sbatch flags, and the job's setup lines)."""
    params = dict(
        name=name, timeout_min=slurm.timeout_min, nodes=slurm.nodes, tasks_per_node=slurm.tasks_per_node,
        cpus_per_task=slurm.cpus_per_task, slurm_signal_delay_s=slurm.signal_delay_s,
        slurm_array_parallelism=max_parallel,
        # one OpenMP thread per CPU the job owns: spinning threads on shared cores slow steps 20-60x
        slurm_setup=[f"export OMP_NUM_THREADS={slurm.cpus_per_task}"],
        # srun restated: since SLURM 22.05 it no longer inherits --cpus-per-task from sbatch (each rank and
        # its loader workers would share one core); a rank that dies ends the step instead of leaving the
        # others waiting in a collective
        slurm_srun_args=[f"--cpus-per-task={slurm.cpus_per_task}", "--kill-on-bad-exit=1"],
    )
    if slurm.gpus_per_node:
        params["gpus_per_node"] = slurm.gpus_per_node
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    if slurm.mem_per_cpu_gb:
        params["slurm_mem_per_cpu"] = f"{int(slurm.mem_per_cpu_gb * 1024)}M"
    for key in ("partition", "account", "qos"):
        if getattr(slurm, key):
            params[f"slurm_{key}"] = getattr(slurm, key)
    if slurm.sbatch:
        params["slurm_additional_parameters"] = dict(slurm.sbatch)
    return params
