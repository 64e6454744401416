"""One cell of the detection or segmentation table (what the notebooks call)."""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..results import RunPaths, read_json
from ..train import StopRequests, TrainingError
from .engine import train_dense


def imagenet_checkpoint(results: Path, model: str) -> Path | None:
    """The checkpoint of a complete full-profile, distilled run of ``model`` in the store's imagenet table."""
    for folder in sorted((results / "imagenet").glob(f"{model}-*")):
        record = read_json(folder / "record.json") or {}
        if (record.get("status") == "complete" and record.get("profile") == "full" and record.get("distillation")
                and (folder / "checkpoint.pth").is_file()):
            return folder / "checkpoint.pth"
    return None


def backbone_weights(config: RunConfig, output: Path, checkpoints: dict) -> Path | None:
    """ImageNet weights of the backbone: ``checkpoints[model]``, else (full profile) the imagenet table's
    run beside this one in the results store. The smoke profile starts from random weights."""
    if config.model in checkpoints:
        return Path(checkpoints[config.model]).expanduser()
    if config.profile == "smoke":
        return None
    found = imagenet_checkpoint(output.parent.parent, config.model)
    if found is None:
        raise TrainingError(f"no ImageNet weights for {config.model}: give backbone_checkpoints = "
                            f"{{{config.model} = 'repnext_{config.model[-2:]}_distill_300e.pth'}} in the spec, or "
                            "run the imagenet table with the full profile into the same results store")
    return found


def run_dense_cell(task: str, config: dict | RunConfig, output: str | Path, backbone_checkpoints: dict | None = None,
                   progress: bool = False) -> dict:
    """Train (or resume) the run ``config`` of ``task`` ('detection' or 'segmentation') into ``output``."""
    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    output = Path(output)
    weights = backbone_weights(config, output.resolve(), backbone_checkpoints or {})
    with StopRequests(RunPaths(output).stop) as should_stop:
        return train_dense(task, config, output, weights, progress=progress, should_stop=should_stop)
