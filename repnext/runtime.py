"""Where this process runs: its place in a job (torchrun's or SLURM's variables), the process group it joins, and
the machine every record names. Light on purpose: the cells that only measure (latency, equivalence, bench,
export, cam, validate) import it without the training module."""
from __future__ import annotations

import dataclasses
import os
import platform
import re
import socket
import subprocess
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as dist

import repnext


@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch_env(environ: Mapping[str, str] = os.environ) -> Dist:
    """Who this process is: torchrun's variables (also what submitit's TorchDistributedEnvironment.export()
    sets) or, without them, SLURM's in a task of a plain ``srun -n N`` step, as the official utils.py reads
    them (else N independent world-1 runs would write one folder)."""
    if "WORLD_SIZE" in environ:
        return Dist(int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", "0")))
    if "SLURM_STEP_NUM_TASKS" in environ:  # srun sets it for its tasks; the batch script itself has none
        world = int(environ["SLURM_STEP_NUM_TASKS"])
        return Dist(int(environ["SLURM_PROCID"]), world, int(environ.get("SLURM_LOCALID", "0")))
    return Dist()


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu[03-05,7],cpu1`` -> ``gpu03``), parsed without scontrol."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    return match[1] + re.split(r"[-,]", match[2])[0] if match[2] else match[1]


def slurm_rendezvous(environ: Mapping[str, str]) -> tuple[str, str]:
    """MASTER_ADDR and MASTER_PORT for a plain srun step: the step's first host, a port from the job id."""
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "localhost"
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        hosts = []
    return hosts[0] if hosts else first_host(nodelist), str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000)


def backend_for(device: torch.device) -> str:
    """The process group's backends: host values (the stop agreement, metric sums) reduce through gloo, CUDA
    tensors (DDP's gradients, BatchNorm statistics) through NCCL."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device, env: Dist) -> Dist:
    """Join the process group of ``env`` (from ``launch_env``) on ``device``."""
    if env.world <= 1:
        return Dist()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the group: NCCL binds each rank to its own GPU
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # a plain srun step: no torchrun rendezvous
            addr, port = slurm_rendezvous(os.environ)
            os.environ["MASTER_ADDR"] = addr
            os.environ.setdefault("MASTER_PORT", port)
        dist.init_process_group(backend_for(device), rank=env.rank, world_size=env.world)
    return env


def all_sum(values: list[float], env: Dist) -> list[float]:
    """Sums of host values over the ranks, through gloo (a CUDA job's group has it beside NCCL)."""
    if env.world == 1 and not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (gloo raises on a closed connection)."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or "connection closed by peer" in text or "connection reset" in text


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hostnames(env: Dist) -> list[str]:
    """Every rank's host, in rank order (collective: all ranks call it)."""
    hosts = [socket.gethostname()] * env.world
    if env.world > 1:
        dist.all_gather_object(hosts, socket.gethostname())
    return hosts


def environment(device: torch.device, env: Dist) -> dict:
    def git_sha() -> str | None:
        try:
            return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                  text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    return {
        "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "world_size": env.world, "hosts": hostnames(env), "torch": torch.__version__, "timm": version("timm"),
        "repnext": repnext.__version__, "git_sha": git_sha(),
    }
