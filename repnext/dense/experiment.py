"""One cell of the detection or segmentation table (what the notebooks call; the contract of ``repnext.cells``)."""
from __future__ import annotations

from pathlib import Path

from .. import experiment
from ..config import RunConfig
from ..profiles import get_profile
from ..recipes import get_recipe
from ..reference import table_fuse_mode
from ..store import RunPaths, read_json
from ..train import StopRequests, TrainingError
from .engine import train_dense


def imagenet_run(model: str, profile: str, cell: dict) -> RunConfig:
    """The imagenet table's run of ``model`` for its paper cell ``cell`` (recipe, data, epochs, distillation;
    plain values, as a spec's expansion resolves them), scaled by ``profile`` as ``ablations.spec`` expands it:
    the same run id, the same folder."""
    prof = get_profile(profile)
    return RunConfig(model, recipe=cell["recipe"], profile=profile, data=prof.dataset_for(cell["data"]),
                     epochs=prof.epochs_for(cell["epochs"], get_recipe(cell["recipe"]).epochs),
                     distillation=cell["distillation"])


def backbone_weights(config: RunConfig, results: Path, checkpoints: dict, backbone_run: dict | None,
                     progress: bool = False) -> Path | None:
    """ImageNet weights of the backbone: ``checkpoints[model]``, else the checkpoint of the imagenet table's
    run ``backbone_run`` in the same results store. The smoke profile trains that run when it is missing
    (minutes; the imagenet table then finds it complete); the full profile asks for it."""
    if config.model in checkpoints:
        return Path(checkpoints[config.model]).expanduser()
    if not backbone_run:
        return None
    run = imagenet_run(config.model, config.profile, backbone_run)
    folder = results / "imagenet" / run.run_id
    paths = RunPaths(folder)
    record = read_json(paths.record) or {}
    if record.get("status") != "complete":
        if get_profile(config.profile).substitute_data:  # as the imagenet notebook runs it: the same record
            experiment.run_cell(run, folder, paper={"model": config.model, **backbone_run},
                                fuse_mode=table_fuse_mode("imagenet"), throughput_batch=None, progress=progress)
        else:
            raise TrainingError(f"no ImageNet weights for {config.model}: the imagenet table's run {run.run_id} is "
                                f"not complete in {results}; run that table first, or give backbone_checkpoints = "
                                f"{{{config.model} = '.../repnext_{config.model[-2:]}_distill_300e.pth'}} in the spec")
    return paths.checkpoint


def run_cell(config: dict | RunConfig, output: str | Path, *, task: str, backbone_checkpoints: dict | None = None,
             backbone_run: dict | None = None, progress: bool = False) -> dict:
    """Train (or resume) the run ``config`` of ``task`` ('detection' or 'segmentation') into ``output``
    (``results/<table>/<run id>``), its backbone initialised as ``backbone_weights`` says."""
    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    output = Path(output)
    weights = backbone_weights(config, output.resolve().parent.parent, backbone_checkpoints or {}, backbone_run,
                               progress)
    with StopRequests(RunPaths(output).stop) as should_stop:
        return train_dense(task, config, output, weights, progress=progress, should_stop=should_stop)
