"""One cell of a paper table: the run's training plus what its table reports beside accuracy.

The notebooks call ``run_cell`` (the contract of ``repnext.cells``); it measures the architecture at the paper's
setting (params and MACs of the inference form at 224 px with the paper's class count, whatever the profile
trains at) and the inference throughput on the device running the job, then trains (or resumes) the run. The
measurements travel in the run's record, so a record is complete exactly when everything its table needs is in it.
"""
from __future__ import annotations

from pathlib import Path

from .bench import throughput
from .complexity import complexity
from .config import PAPER_NUM_CLASSES, RunConfig
from .profiles import get_profile
from .runtime import launch_env
from .store import RunPaths
from .train import StopRequests, pick_device, train


def run_cell(config: dict | RunConfig, output: str | Path, *, paper: dict | None = None,
             num_classes: int | None = None, img_size: int = 224, fuse_mode: str = "official",
             throughput_batch: int | None = 16, progress: bool = False) -> dict:
    """Train the run ``config`` into ``output`` (resuming it if interrupted) and return its record (the cell
    contract of ``repnext.cells``).

    ``num_classes``/``img_size``/``fuse_mode``: the paper's counting setting for this table (a table spec's
    fuse mode is its reference table's, ``repnext.reference.table_fuse_mode``; the counts of ``make models``
    where it has them, else counted here: ``repnext.complexity.complexity``); ``num_classes=None`` takes it
    from the paper's dataset of the cell (``paper["data"]``, whatever the profile trains on).
    ``throughput_batch=None`` skips the throughput.
    """
    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    extra = {}
    if num_classes is None:
        data = (paper or {}).get("data", "imagenet")
        if get_profile(config.profile).substitute_data:
            # this run stands for the cells of every paper dataset (all trained on the profile's data):
            # record the paper's counting setting of each, the table picks its cell's
            extra["paper_settings"] = {d: complexity(config.model, n, img_size, fuse_mode).as_dict()
                                       for d, n in PAPER_NUM_CLASSES.items()}
            extra["paper_setting"] = extra["paper_settings"][data]
        else:
            num_classes = PAPER_NUM_CLASSES[data]
    if "paper_setting" not in extra:
        extra["paper_setting"] = complexity(config.model, num_classes, img_size, fuse_mode).as_dict()
    rank = launch_env()
    if throughput_batch and rank.main:  # DDP: the rank writing the record times, on the job's device
        device = str(pick_device(config.device, rank))
        extra["throughput"] = throughput(config.model, batch=throughput_batch, img_size=img_size, device=device)
    paths = RunPaths(Path(output))
    with StopRequests(paths.stop if rank.main else None) as should_stop:  # rank 0 watches the file for all
        # a cell of another table may be training this very run (the dense tables train the imagenet table's
        # backbone run when it is missing): wait for it and take its record, rather than fail
        return train(config, output, progress=progress, should_stop=should_stop, extra=extra, wait_for_lock=True)


def plot_curves(output: str | Path, title: str | None = None):
    """The run's curves from its log.txt: train/test loss and top-1/top-5 per epoch (a matplotlib Figure)."""
    import matplotlib.pyplot as plt  # the notebooks extra; the core does not need it
    import pandas as pd
    import seaborn as sns

    log = pd.read_json(RunPaths(Path(output)).log, lines=True)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    losses = log.melt(id_vars="epoch", value_vars=["train_loss", "test_loss"], var_name="split")
    sns.lineplot(losses, x="epoch", y="value", hue="split", marker="o", ax=ax_loss)
    ax_loss.set(ylabel="loss")
    accs = log.melt(id_vars="epoch", value_vars=["test_acc1", "test_acc5"], var_name="metric")
    sns.lineplot(accs, x="epoch", y="value", hue="metric", marker="o", ax=ax_acc)
    ax_acc.set(ylabel="accuracy (%)")
    fig.suptitle(title or Path(output).name)
    return fig
