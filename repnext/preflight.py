"""What a run checks before it builds or writes anything: the values, the device, and the run folder it claims.

A folder holds one run (its id, ``RunConfig.run_id``); fields outside the id (where the data is, the device,
the workers) may change between attempts. A checkpoint that cannot resume this run is refused here, by name,
before an epoch is spent.
"""
from __future__ import annotations

import re
from pathlib import Path

from .config import RunConfig
from .errors import RepnextError
from .store import RunPaths, read_json

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
TRAINING_KEYS = ("model", "optimizer", "epoch", "step", "partial", "history", "best", "train_time", "train_samples")


class PreflightError(RepnextError):
    """A run that must not start: a bad device or model name, or a folder that holds something else."""


def check_device_name(name: str) -> None:
    if not DEVICE.fullmatch(name):
        raise PreflightError(f"--device {name!r} is not a device; expected auto, cpu, mps, cuda or cuda:N")


def check_device(name: str) -> None:
    """Refuse a device name torch does not know or this machine lacks, before torch is asked to build one."""
    check_device_name(name)
    if name.startswith("cuda"):
        import torch

        count = torch.cuda.device_count()
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise PreflightError(f"--device {name!r}: this machine has {have}; use --device cpu or auto")


def check_model(name: str) -> None:
    import timm

    import repnext  # noqa: F401  (registers the project's models)

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f" (e.g. {', '.join(close)})" if close else ""
        raise PreflightError(f"--model {name!r} is not a timm model{hint}; `python -m repnext.models` lists ours")


def check_run_folder(paths: RunPaths, config: RunConfig) -> None:
    """Refuse a folder whose config.json is another run's (location fields do not count) or unreadable."""
    stored = read_json(paths.config)
    if stored is None:
        return
    try:
        stored_id = RunConfig.from_dict(stored["config"]).run_id
    except (KeyError, TypeError, ValueError) as e:
        raise PreflightError(f"{paths.config} is not a run's config.json ({e}); fix or delete it") from None
    if stored_id != config.run_id:
        raise PreflightError(f"{paths.root} holds another run ({stored_id}, not {config.run_id}); "
                             "choose another --output")


def check_resumable(checkpoint: Path, run_id: str) -> None:
    """Refuse a checkpoint.pth that cannot resume ``run_id``: a folder, an empty or foreign file, another run's."""
    if not checkpoint.exists():
        return
    if not checkpoint.is_file():
        raise PreflightError(f"{checkpoint} is a directory, not a checkpoint; move it away to start the run")
    from .checkpoint import CheckpointError, load_weights_only  # torch: only when there is a checkpoint

    what = f"cannot resume from {checkpoint}"
    try:
        ckpt = load_weights_only(checkpoint)
    except CheckpointError as e:
        raise PreflightError(f"{what}: {str(e).partition('; expected')[0].removeprefix(f'{checkpoint} ')}") from None
    if not isinstance(ckpt, dict):
        raise PreflightError(f"{what}: it holds a {type(ckpt).__name__}, not a training checkpoint")
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise PreflightError(f"{what}: not a training checkpoint of this engine (no {', '.join(missing)})")
    if ckpt.get("run_id") != run_id:
        raise PreflightError(f"{what}: it is run {ckpt.get('run_id')}'s, not {run_id}'s; move it away or "
                             "choose another --output")
