"""Figures drawn from the results store after a table, by name (a spec's ``figures = [...]``). Each takes
(spec, runs, results, profile, out_dir) and returns the files it wrote (PNG and PDF)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .spec import Run, TableSpec

Figure = Callable[[TableSpec, list[Run], Path, str, Path], list[Path]]

FIGURES: dict[str, Figure] = {}


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF, each written to a temporary name and renamed (a reader never sees half a figure)."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path, tmp = out_dir / f"{name}.{ext}", out_dir / f".{name}.{ext}.tmp"
        fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths


def convergence(spec: TableSpec, runs: list[Run], results: Path, profile: str, out_dir: Path) -> list[Path]:
    """Top-1 against the epoch budget, one curve per model and dataset: the paper's (top row) and ours
    (bottom row, from the results store; smoke numbers are on the digits, so they get their own axes)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from repnext.reference import paper_values

    from .render import complete_record

    rows = []
    for run in runs:
        table = f"compact_{run.paper['data']}"
        label, epochs = spec.label(run), run.paper["epochs"]
        for v in paper_values(table, run.config.model, f"top1_{epochs}e"):
            rows.append({"source": "paper", "data": run.paper["data"], "model": label, "epochs": epochs,
                         "top1": v.value})
        record = complete_record(run, results)
        if record is not None:
            rows.append({"source": f"ours ({profile})", "data": run.paper["data"], "model": label, "epochs": epochs,
                         "top1": record["best"]["acc1"]})
    frame = pd.DataFrame(rows).drop_duplicates()
    sources = list(dict.fromkeys(frame["source"]))
    datasets = list(dict.fromkeys(run.paper["data"] for run in runs))
    fig, axes = plt.subplots(len(sources), len(datasets), figsize=(4.2 * len(datasets), 3.2 * len(sources)),
                             squeeze=False, layout="constrained")
    names = {"cifar100": "CIFAR-100", "imagenet": "ImageNet-1K"}
    models = list(dict.fromkeys(spec.label(run) for run in runs))  # one colour per model in every panel
    palette = dict(zip(models, sns.color_palette(n_colors=len(models))))
    for i, source in enumerate(sources):
        for j, data in enumerate(datasets):
            ax = axes[i][j]
            part = frame[(frame["source"] == source) & (frame["data"] == data)]
            if part.empty:
                ax.text(0.5, 0.5, "no complete runs yet", ha="center", va="center", transform=ax.transAxes)
            else:
                sns.lineplot(part, x="epochs", y="top1", hue="model", hue_order=models, palette=palette,
                             marker="o", ax=ax, legend=(i, j) == (0, 0))
            ax.set(title=f"{names.get(data, data)}: {source}", xlabel="epochs (paper's budget)",
                   ylabel="top-1 (%)", xticks=sorted(set(frame["epochs"])))
    return _save(fig, out_dir, spec.name)


FIGURES["convergence"] = convergence
