"""Figures drawn from the results store after a table, by name (a spec's ``figures = [...]``). Each takes
(spec, runs, results, profile, out_dir) and returns the files it wrote (PNG and PDF)."""
from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

from repnext.files import atomic_write
from repnext.reference import round_half_up
from repnext.schema import Gradcam, Latency

from .records import METRICS, complete_record, official_runs
from .spec import Run, TableSpec

Figure = Callable[[TableSpec, list[Run], Path, str, Path], list[Path]]

FIGURES: dict[str, Figure] = {}


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF, each written atomically (a reader never sees half a figure)."""
    import matplotlib.pyplot as plt

    # no creation date in the PDF: re-rendering unchanged results gives identical files
    paths = [atomic_write(out_dir / f"{name}.{ext}", lambda f, ext=ext: fig.savefig(
        f, format=ext, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None))
        for ext in ("png", "pdf")]
    plt.close(fig)
    return paths


def convergence(spec: TableSpec, runs: list[Run], results: Path, profile: str, out_dir: Path) -> list[Path]:
    """Top-1 against the epoch budget, one curve per model and dataset: the paper's (top row), ours (from the
    results store; smoke numbers are on the digits, so they get their own axes) and the official logs'
    (imported records, e.g. StarNet-S1's, which the paper's table lacks)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from repnext.reference import paper_values

    rows = []
    for run in [*runs, *official_runs(spec, results)]:
        table = f"compact_{run.paper['data']}"
        label, epochs = spec.label(run), run.paper["epochs"]
        for v in paper_values(table, run.config.model, f"top1_{epochs}e"):
            rows.append({"source": "paper", "data": run.paper["data"], "model": label, "epochs": epochs,
                         "top1": v.value})
        record = complete_record(run, results)
        if record is not None:
            source = "official logs" if record.imported else f"ours ({profile})"
            rows.append({"source": source, "data": run.paper["data"], "model": label, "epochs": epochs,
                         "top1": METRICS["top1"].value(record)})
    frame = pd.DataFrame(rows).drop_duplicates()
    sources = list(dict.fromkeys(frame["source"]))
    datasets = list(dict.fromkeys(run.paper["data"] for run in runs))
    fig, axes = plt.subplots(len(sources), len(datasets), figsize=(4.2 * len(datasets), 3.2 * len(sources)),
                             squeeze=False, layout="constrained")
    names = {"cifar100": "CIFAR-100", "imagenet": "ImageNet-1K"}
    models = list(dict.fromkeys(frame["model"]))  # one colour per model in every panel
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


FAMILIES = {"repnext": "RepNeXt", "repvit": "RepViT", "convnext": "ConvNeXt"}
# Figure 1 plots the distilled 300-epoch top-1, as the README's claims (RepViT's from its own paper)
PAPER_ACCURACY = (("imagenet", "repvit"), "top1_distill")
PAPER_LABEL = "paper's top-1 (distilled)"


def _family(model: str) -> str:
    return next((v for k, v in FAMILIES.items() if model.startswith(k)), model)


def our_top1(model: str, results: Path, profile: str) -> float | None:
    """Best top-1 of the model's distilled run of the ``imagenet`` table, if complete and trained on ImageNet
    (a profile that substitutes data, e.g. smoke's digits, gives no ImageNet accuracy)."""
    from repnext.profiles import get_profile

    from .spec import SpecError, load_spec

    if get_profile(profile).substitute_data:
        return None
    try:
        runs = load_spec("imagenet").expand(profile)
    except SpecError:
        return None
    for run in runs:
        if run.config.model == model and run.paper.get("distillation") is True:
            record = complete_record(run, results)
            if record is not None:
                return METRICS["top1"].value(record)
    return None


def latency_accuracy_frame(spec: TableSpec, runs: list[Run], results: Path, profile: str):
    """Figure 1's points: ``panel`` paper (iPhone 12 latency, paper top-1) or ours (this machine's fused batch-1
    latency; our top-1 where the results store has it, else the paper's, said in ``accuracy``; ``job``: the runs
    timed together with it). Models with a latency but no accuracy anywhere have ``top1`` NaN (listed under the
    figure, not plotted)."""
    import pandas as pd

    from repnext.reference import paper_values

    rows = []
    for run in {run.config.model: run for run in runs}.values():
        model, label = run.config.model, spec.label(run)
        short = label.split("-", 1)[-1]
        paper_lat = paper_values(spec.reference, model, "latency_ms")
        paper_acc = paper_values(*PAPER_ACCURACY[:1], model, PAPER_ACCURACY[1])
        top1 = paper_acc[0].value if len(paper_acc) == 1 else float("nan")
        base = {"model": label, "short": short, "family": _family(model)}
        if len(paper_lat) == 1:
            rows.append(base | {"panel": "paper", "latency_ms": paper_lat[0].value, "top1": top1,
                                "accuracy": PAPER_LABEL, "device": "iPhone 12 (iOS 16, Core ML)"})
        record = complete_record(run, results)
        if record is not None and isinstance(record.payload, Latency):
            ours = our_top1(model, results, profile)
            cpu = record.payload.cpu
            accuracy = f"our top-1 ({profile})" if ours is not None else PAPER_LABEL if top1 == top1 else "none"
            rows.append(base | {"panel": "ours", "latency_ms": METRICS["latency_ms"].value(record),
                                "top1": top1 if ours is None else ours, "accuracy": accuracy,
                                "device": f"{cpu.device}, {cpu.threads} thread(s)",
                                "job": " ".join(record.payload.side_by_side)})
    columns = ["panel", "model", "short", "family", "latency_ms", "top1", "accuracy", "device", "job"]
    return pd.DataFrame(rows, columns=columns)


def latency_accuracy(spec: TableSpec, runs: list[Run], results: Path, profile: str, out_dir: Path) -> list[Path]:
    """Figure 1: latency (x) against ImageNet-1K top-1 (y) per model family; left the paper's points (iPhone 12),
    right ours (this machine, batch 1, fused form), each point's accuracy source marked."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.lines import Line2D

    frame = latency_accuracy_frame(spec, runs, results, profile)
    families = list(dict.fromkeys(_family(run.config.model) for run in runs))
    palette = dict(zip(families, sns.color_palette(n_colors=len(families))))
    markers = {PAPER_LABEL: "X", f"our top-1 ({profile})": "o"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True, layout="constrained")
    ours_all = frame[frame["panel"] == "ours"]
    for ax, panel in zip(axes, ("paper", "ours")):
        part = frame[(frame["panel"] == panel)].dropna(subset=["top1"])  # in the table's order: M0 -> M5
        if panel == "paper":
            title = "paper: iPhone 12, iOS 16 (Core ML)"
        elif ours_all.empty:
            title = "ours: no complete runs yet"
        else:
            jobs = ours_all["job"].nunique()  # models timed apart compare the machine's load as much
            together = "in one job, interleaved" if jobs == 1 else f"in {jobs} separate jobs"
            title = f"ours: {ours_all['device'].iloc[0]}\nbatch 1, fused form, timed {together}"
        if part.empty:
            ax.text(0.5, 0.5, "no points yet", ha="center", va="center", transform=ax.transAxes)
        else:
            present = [f for f in families if f in set(part["family"])]
            sns.lineplot(part, x="latency_ms", y="top1", hue="family", hue_order=present, palette=palette,
                         sort=False, estimator=None, ax=ax, legend=False)
            sns.scatterplot(part, x="latency_ms", y="top1", hue="family", hue_order=present, palette=palette,
                            style="accuracy", markers=markers, s=70, ax=ax, legend=True)
            for row in part.itertuples():
                ax.annotate(row.short, (row.latency_ms, row.top1), textcoords="offset points", xytext=(5, -10),
                            fontsize=8)
        unplaced = frame[(frame["panel"] == panel) & frame["top1"].isna()]
        if not unplaced.empty:  # measured, but no accuracy to place them by: ticks on the latency axis
            sns.rugplot(unplaced, x="latency_ms", hue="family", palette=palette, height=0.05, linewidth=2, ax=ax,
                        legend=False)
        handles, labels = ax.get_legend_handles_labels()
        for family in dict.fromkeys(unplaced["family"]):
            handles.append(Line2D([], [], color=palette[family], marker="|", linestyle="None", markersize=10,
                                  markeredgewidth=2))
            labels.append(f"{family}: latency only (tick)")
        if handles:
            ax.legend(handles, labels, fontsize=8, loc="lower right")
        ax.set(title=title, xlabel="latency (ms)", ylabel="ImageNet-1K top-1 (%)")
        ax.grid(alpha=0.3)
    unplaced = ours_all[ours_all["top1"].isna()]
    tables = "/".join(PAPER_ACCURACY[0])
    notes = [f"top-1: the paper's {PAPER_ACCURACY[1]} ({tables} tables of reference.csv) unless marked "
             "as ours; the two panels' latencies come from different hardware"]
    if not unplaced.empty:
        listed = ", ".join(f"{r.model} {round_half_up(r.latency_ms, 1)} ms" for r in unplaced.itertuples())
        notes.append(f"ticks on the latency axis: measured, no ImageNet top-1 in reference.csv or the store: {listed}")
    fig.suptitle(f"Figure 1: latency vs ImageNet-1K top-1 (profile {profile})")
    fig.supxlabel("\n".join(textwrap.fill(note, 160) for note in notes), fontsize=8)
    return _save(fig, out_dir, "latency_accuracy")


FIGURES["latency_accuracy"] = latency_accuracy


def gradcam(spec: TableSpec, runs: list[Run], results: Path, profile: str, out_dir: Path) -> list[Path]:
    """Figure 3: rows images, columns the input then each model's maps (one column per CAM method), assembled
    from the runs' ``cams.npz`` (``repnext.cam.run_cell``)."""
    import numpy as np

    from repnext.cam import CAMS_FILE, cam_grid

    rgb, names, columns, maps, cells = None, None, [], [], []
    for run in runs:
        record = complete_record(run, results)
        if record is None or not isinstance(record.payload, Gradcam):
            continue
        cam = record.payload
        with np.load(run.folder(results) / cam.figure.cams) as data:
            if rgb is None:
                rgb, names = data["rgb"], [str(n) for n in data["names"]]
            elif [str(n) for n in data["names"]] != names:
                raise ValueError(f"{run.run_id}: its CAM images differ from the other runs' ({CAMS_FILE})")
            acc = METRICS["cam_top1"].value(record)
            desc = f"{cam.images.img_size} px" + (f", top-1 {round_half_up(acc, 0)}%" if acc is not None
                                                            else "")
            for j, method in enumerate(str(m) for m in data["methods"]):
                columns.append(f"{spec.label(run)}\n{method}, {desc}")
                maps.append(data["cams"][:, j])
                cells.append([f"pred: {int(p)}" for p in data["pred"]])
    if rgb is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.text(0.5, 0.5, "no complete runs with maps yet", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, out_dir, spec.name)
    fig = cam_grid(rgb, np.stack(maps, 1), columns, image_labels=names,
                   cell_labels=[list(row) for row in zip(*cells)],
                   title=f"Figure 3: class activation maps (profile {profile})")
    return _save(fig, out_dir, spec.name)


FIGURES["gradcam"] = gradcam
