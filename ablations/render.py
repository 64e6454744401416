"""Results store -> pandas -> ``paper_tables/<table>.md`` and ``.tex``: paper | ours | delta per metric.

Paper values come only from ``paper_tables/reference.csv`` (``repnext.reference``); reproduced values only
from complete records of the results store. Nothing here depends on time, so re-rendering unchanged
results gives identical files.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from repnext.files import atomic_write_text
from repnext.profiles import get_profile
from repnext.reference import PaperValue, paper_values
from repnext.results import read_json

from .spec import Column, Run, TableSpec, load_spec

MISSING = "—"


@dataclass(frozen=True)
class Metric:
    header: str
    value: Callable[[dict], float]
    decimals: int = 2  # where the paper printed no value to take the precision from
    comparable: bool = True  # False: a delta to the paper's value means nothing (measured on other hardware)
    trained: bool = False  # a result of training: comparable only when the run trained on the paper's dataset
    fmt: str | None = None  # format where the paper has no value (default: ``decimals`` fixed-point)


METRICS = {
    "top1": Metric("Top-1 (%)", lambda r: r["best"]["acc1"], trained=True),
    "top5": Metric("Top-5 (%)", lambda r: r["best"]["acc5"], trained=True),
    "params_m": Metric("Params (M)", lambda r: r["paper_setting"]["fused_params"] / 1e6),
    "gmacs": Metric("GMACs", lambda r: r["paper_setting"]["macs"] / 1e9),
    "train_params_m": Metric("Training-form params (M)", lambda r: r["paper_setting"]["train_params"] / 1e6),
    "train_img_s": Metric("Training images/s", lambda r: r["train_images_per_second"], 1, comparable=False),
    # the equivalence table (repnext.equivalence): errors against the training form, the single-branch form
    "err_official": Metric("Official fuse error", lambda r: r["forms"]["official"]["max_abs_error"], fmt="{:.1e}"),
    "err_full": Metric("Full fuse error", lambda r: r["forms"]["full"]["max_abs_error"], fmt="{:.1e}"),
    "err_single_branch": Metric("Single-branch error", lambda r: r["forms"]["single_branch"]["max_abs_error"],
                                fmt="{:.1e}"),
    "err_single_branch_plain": Metric("Naive single-branch error",
                                      lambda r: r["forms"]["single_branch_plain"]["max_abs_error"], fmt="{:.1e}"),
    "params_official_m": Metric("Params (M)", lambda r: r["forms"]["official"]["params"] / 1e6),
    "gmacs_official": Metric("GMACs", lambda r: r["forms"]["official"]["macs"] / 1e9),
    "params_single_branch_m": Metric("Single-branch params (M)", lambda r: r["forms"]["single_branch"]["params"] / 1e6),
    "gmacs_single_branch": Metric("Single-branch GMACs", lambda r: r["forms"]["single_branch"]["macs"] / 1e9),
    "params_e_m": Metric("E model params (M)", lambda r: r["e_model"]["fused_params"] / 1e6),
    "gmacs_e": Metric("E model GMACs", lambda r: r["e_model"]["macs"] / 1e9),
    # the released table (repnext.validate): a checkpoint's top-1 in the training and the fused form
    "released_top1": Metric("Top-1 (%)", lambda r: r["unfused"]["acc1"], trained=True),
    "released_fused_top1": Metric("Fused top-1 (%)", lambda r: r["fused"]["acc1"], trained=True),
    "logit_diff": Metric("Largest logit difference", lambda r: r["max_logit_diff"], fmt="{:.1e}", comparable=False),
    "throughput_img_s": Metric("Throughput (img/s)", lambda r: r["throughput"]["images_per_second"], 0,
                               comparable=False),
    # the latency table (repnext.latency): this machine's timings beside the paper's iPhone 12 ones, so no delta
    "latency_ms": Metric("Latency (ms)", lambda r: r["cpu"]["forms"][r["cpu"]["fused_form"]]["latency_ms"],
                         comparable=False),
    "latency_train_ms": Metric("Training-form latency (ms)", lambda r: r["cpu"]["forms"]["train"]["latency_ms"],
                               comparable=False),
    "latency_single_branch_ms": Metric("Single-branch latency (ms)",
                                       lambda r: r["cpu"]["forms"].get("single_branch", {}).get("latency_ms"),
                                       comparable=False),
    "gpu_throughput_img_s": Metric("GPU throughput (img/s)", lambda r: (r["gpu"] or {}).get("images_per_second"),
                                   0, comparable=False),
    "backbone_latency_ms": Metric("Backbone latency (ms)", lambda r: (r["backbone"] or {}).get("latency_ms"),
                                  comparable=False),
    # --- the gradcam table (repnext.cam.run_cell, the paper's Figure 3): accuracy, CAM mass on the digit ---
    "cam_top1": Metric("Top-1 on the CAM images (%)", lambda r: (r.get("accuracy") or {}).get("acc1"), 1),
    **{f"{key}_{part}": Metric(f"{title}: {label}", lambda r, m=method, w=which, f=field:
                               (((r.get("cam") or {}).get(m) or {}).get(w) or {}).get(f), 3, comparable=False)
       for key, method, title in (("gradcam", "gradcam", "Grad-CAM"), ("gradcampp", "gradcam++", "Grad-CAM++"))
       for part, which, field, label in (("on_digit", "trained", "mass_on_digit", "mass on digit"),
                                         ("on_background", "trained", "mass_on_background", "mass on background"),
                                         ("random_on_digit", "random", "mass_on_digit", "random init, on digit"))},
}


def complete_record(run: Run, results: Path) -> dict | None:
    record = read_json(run.folder(results) / "record.json")
    return record if record is not None and record.get("status") == "complete" else None


def _paper(spec: TableSpec, column: Column, run: Run) -> PaperValue | None:
    if not column.reference:  # a quantity the paper does not report
        return None
    # a run of another table is already the referenced model (e.g. the E model of the StarNet table)
    model = run.config.model if column.from_table else (column.reference_model or "{model}").format(
        model=run.config.model)
    found = paper_values(column.reference_table or spec.reference, model, column.reference)
    return found[0] if len(found) == 1 else None


def _cell(spec: TableSpec, column: Column, group: list[Run], results: Path) -> tuple[Run | None, dict | None]:
    """The run of a row that fills ``column`` (the first complete one matching ``where``) and its record."""
    if column.from_table:  # e.g. the equivalence table's E model accuracy, from the StarNet-recipe table
        model = (column.reference_model or "{model}").format(model=group[0].config.model)
        group = [r for r in load_spec(column.from_table).expand(group[0].config.profile) if r.config.model == model]
    matching = [r for r in group if all(r.paper.get(k) == v for k, v in column.where.items())]
    for run in matching:
        record = complete_record(run, results)
        if record is not None:
            # a run serving cells of several paper datasets (smoke trains them all on the digits) holds the
            # paper's counting setting of each: take this cell's
            settings = record.get("paper_settings", {})
            if run.paper.get("data") in settings:
                record = dict(record, paper_setting=settings[run.paper["data"]])
            return run, record
    return (matching[0] if matching else None), None


def table_frame(spec: TableSpec, runs: list[Run], results: Path) -> pd.DataFrame:
    """One row per row key (``spec.rows``, default the model); columns (header, paper|ours|Δ), all formatted
    at the paper's precision, and the row's runs."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.paper[f] for f in spec.rows), []).append(run)
    rows, index = [], []
    for group in groups.values():
        row = {}
        for column in spec.columns:
            metric = METRICS[column.metric]
            header = column.header or metric.header
            run, record = _cell(spec, column, group, results)
            paper = _paper(spec, column, run) if run is not None else None
            ours = metric.value(record) if record is not None else None
            row[(header, "paper")] = paper.text if paper else MISSING
            if ours is None:
                row[(header, "ours")] = row[(header, "Δ")] = MISSING
            elif paper is not None:
                row[(header, "ours")] = paper.format(ours)
                # smoke accuracies are the digits', not ImageNet's: beside the paper's, but no delta
                other_data = metric.trained and record.get("data") not in (None, run.paper.get("data"))
                row[(header, "Δ")] = (MISSING if other_data or not metric.comparable
                                      else f"{paper.delta(ours):+.{paper.decimals}f}")
            else:
                row[(header, "ours")] = metric.fmt.format(ours) if metric.fmt else f"{ours:.{metric.decimals}f}"
                row[(header, "Δ")] = MISSING
        unique = {run.run_id: run for run in group}.values()
        row[("Runs", "")] = "; ".join(_source(run, complete_record(run, results)) for run in unique)
        rows.append(row)
        index.append(spec.label(group[0]))
    frame = pd.DataFrame(rows, index=pd.Index(index, name="Model"))
    # quantities the paper does not report get only the "ours" column
    unreported = [c for c in frame.columns if (c[1] in ("paper", "Δ") and (frame[(c[0], "paper")] == MISSING).all())
                  or (c[1] == "Δ" and (frame[c] == MISSING).all())]  # and deltas that exist nowhere
    frame = frame.drop(columns=unreported)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def _source(run: Run, record: dict | None) -> str:
    if record is None:
        return f"{run.run_id} (not run yet)"
    if record.get("source") == "imported":
        return f"{run.run_id} (imported from {Path(record['source_file']).name})"
    return run.run_id


def provenance(spec: TableSpec, runs: list[Run], results: Path, profile: str) -> list[str]:
    """Lines saying where the reproduced numbers come from: profile, data, device, settings."""
    prof = get_profile(profile)
    records = [r for r in (complete_record(run, results) for run in runs) if r is not None]
    lines = [f"Reproduced columns: profile `{profile}` ({prof.description}); "
             f"{len(records)} of {len(runs)} runs complete.", *spec.notes]
    imported = [r for r in records if r.get("source") == "imported"]
    trained = [r for r in records if r.get("source") == "trained"]
    if imported:
        lines.append(f"{len(imported)} run(s) imported from training logs (`python -m repnext.results import`): "
                     + ", ".join(sorted(Path(r["source_file"]).name for r in imported)) + ".")
    if trained:
        r = trained[0]
        epochs = sorted({t["epochs"] for t in trained})
        span = f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else f"{epochs[0]}"
        recipes = ", ".join(f"`{name}`" for name in sorted({t["recipe"] for t in trained}))
        lines.append(f"Trained here: {r['data_description']}, {r['img_size']} px, {span} epoch(s), recipe {recipes}"
                     + ("; accuracies on another dataset than the paper's are shown beside its values without a "
                        "delta." if prof.substitute_data else "."))
    machines = sorted({_device(r) for r in records if r.get("source") != "imported"})
    if machines:
        lines.append(f"Hardware of the reproduced numbers: {'; '.join(machines)}.")
    if records:
        r = (trained or records)[0]
        setting = r.get("paper_setting")
        if setting:
            per_data = r.get("paper_settings")
            classes = (", ".join(f"{s['num_classes']} for {d}" for d, s in per_data.items()) if per_data
                       else str(setting["num_classes"]))
            lines.append(f"Params and MACs: the `{setting['fuse_mode']}` inference form at {setting['img_size']} px "
                         f"with {classes} classes, counted exactly (the paper's setting).")
        speed = r.get("throughput")
        if speed:
            lines.append(f"Throughput: {speed['device']}, batch {speed['batch']}, {speed['form']} form, "
                         f"{'channels_last' if speed['channels_last'] else 'NCHW'}, {speed['threads']} thread(s); "
                         "the paper measured on a GPU, so no delta is given.")
    return lines


def to_markdown(spec: TableSpec, frame: pd.DataFrame, notes: list[str]) -> str:
    flat = frame.copy()
    flat.columns = [f"{metric} {part}".strip() for metric, part in frame.columns]
    body = flat.reset_index().to_markdown(index=False, disable_numparse=True)
    return f"# {spec.title}\n\n{body}\n\n" + "".join(f"- {line}\n" for line in notes)


def to_latex(spec: TableSpec, frame: pd.DataFrame, notes: list[str]) -> str:
    frame = frame.drop(columns=[("Runs", "")])  # run ids belong in the markdown, not in a paper
    styler = frame.style.format(escape="latex").format_index(escape="latex", axis=0)
    styler = styler.format_index(escape="latex", axis=1)
    caption = tex_escape(f"{spec.title}. " + " ".join(notes))
    latex = styler.to_latex(hrules=True, multicol_align="c", caption=caption, label=f"tab:{spec.name}",
                            position="t")
    return latex.replace("Δ", r"$\Delta$").replace(MISSING, "--")


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "`": ""}


def tex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}`]", lambda m: TEX_SPECIAL[m.group()], text)


def render_table(spec: TableSpec, runs: list[Run], results: Path, profile: str, out_dir: Path) -> list[Path]:
    """The table as .md and .tex, then the spec's figures (``ablations.figures``)."""
    from .figures import FIGURES

    frame = table_frame(spec, runs, results)
    notes = provenance(spec, runs, results, profile)
    paths = [atomic_write_text(out_dir / f"{spec.name}.md", to_markdown(spec, frame, notes)),
             atomic_write_text(out_dir / f"{spec.name}.tex", to_latex(spec, frame, notes))]
    for name in spec.figures:
        paths.extend(FIGURES[name](spec, runs, results, profile, out_dir))
    return paths


def _device(record: dict) -> str:
    env = record.get("environment") or {}
    if env.get("gpu"):
        return f"{env['gpu']} ({env.get('host', '?')})"
    return f"{env.get('cpu', 'CPU')}, {env.get('threads', '?')} thread(s) ({env.get('host', '?')})" if env else "?"


def index_entry(spec: TableSpec, runs: list[Run], results: Path, profile: str, out_dir: Path) -> str:
    """One table's lines in ``paper_tables/README.md``: links to what was rendered and the scale it came from."""
    unique = list({run.run_id: run for run in runs}.values())
    records = [r for r in (complete_record(run, results) for run in unique) if r is not None]
    files = [f"[{p.name}]({p.name})" for p in (out_dir / f"{spec.name}.md", out_dir / f"{spec.name}.tex")
             if p.is_file()]
    # a figure file is named after the figure or, for a table's one figure, after the table
    names = dict.fromkeys([*spec.figures, spec.name] if spec.figures else [])
    figures = [f"[{p.name}]({p.name})" for name in names for ext in (".png", ".pdf")
               if (p := out_dir / f"{name}{ext}").is_file()]
    sources = {}
    for r in records:
        key = "imported from logs" if r.get("source") == "imported" else f"measured on {_device(r)}"
        sources[key] = sources.get(key, 0) + 1
    scale = get_profile(profile)
    lines = [f"## {spec.title}", "",
             f"- Files: {', '.join(files + figures) or 'not rendered yet'}",
             f"- Profile `{profile}` ({scale.description}): {len(records)} of {len(unique)} runs complete"
             + ("; accuracies are the digits', not ImageNet's"
                if scale.substitute_data and any(r.get("source") == "trained" for r in records) else ""),
             *(f"- {n} run(s) {how}" for how, n in sorted(sources.items())), ""]
    return "\n".join(lines)


def render_index(entries: list[str], profile: str, out_dir: Path) -> Path:
    """``paper_tables/README.md``: every rendered table and figure, and at which scale each was reproduced."""
    head = ["# Paper tables, regenerated", "",
            "Generated by `make paper_tables` (`python ablations/run.py --table all`): every table of the RepNeXt "
            "paper and README beside the paper's own values (`reference.csv`, the one place they are typed): "
            "paper | ours | Δ at the paper's precision. Architecture columns (params, MACs) are exact in every "
            "profile; accuracies and timings are as good as the scale and the machine they came from, stated per "
            "table below.", "",
            f"Last rendered with profile `{profile}`. [models.md](models.md): params and MACs of every model "
            "(`make models`).", ""]
    return atomic_write_text(out_dir / "README.md", "\n".join(head + entries).rstrip() + "\n")
