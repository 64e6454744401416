"""Results store -> pandas -> ``paper_tables/<table>.md`` and ``.tex``: paper | ours | delta per metric.

Paper values come only from ``paper_tables/reference.csv`` (``repnext.reference``); reproduced values only
from complete records of the results store. Nothing here depends on time, so re-rendering unchanged
results gives identical files.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd

from repnext.files import atomic_write_text
from repnext.profiles import get_profile
from repnext.reference import PaperValue, paper_values, round_half_up
from repnext.schema import Classification, Latency, Record

from .figures import FIGURES
from .records import METRICS, complete_record, imported_record, official_runs
from .spec import Column, Run, TableSpec, load_spec

MISSING = "—"


def _official_value(spec: TableSpec, column: Column, group: list[Run], results: Path) -> str:
    """An ``official`` column: the imported official log of the row's paper-scale cell, whatever the profile."""
    cells = [run.paper for run in group if all(run.paper.get(k) == v for k, v in column.where.items())]
    metric = METRICS[column.metric]
    for run in spec.expand("full"):
        record = imported_record(run, results) if run.paper in cells else None
        if record is not None:
            return round_half_up(metric.value(record), metric.decimals)
    return MISSING


def _paper(spec: TableSpec, column: Column, run: Run) -> PaperValue | None:
    if not column.reference:  # a quantity the paper does not report
        return None
    # a run of another table is already the referenced model (e.g. the E model of the StarNet table)
    model = run.config.model if column.from_table else (column.reference_model or "{model}").format(
        model=run.config.model)
    found = paper_values(column.reference_table or spec.reference, model, column.reference)
    return found[0] if len(found) == 1 else None


def _cell(spec: TableSpec, column: Column, group: list[Run], results: Path) -> tuple[Run | None, Record | None]:
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
            payload = record.payload
            if isinstance(payload, Classification) and run.paper.get("data") in (payload.paper_settings or {}):
                setting = payload.paper_settings[run.paper["data"]]
                record = dataclasses.replace(record, payload=dataclasses.replace(payload, paper_setting=setting))
            return run, record
    return (matching[0] if matching else None), None


def table_frame(spec: TableSpec, runs: list[Run], results: Path) -> pd.DataFrame:
    """One row per row key (``spec.rows``, default the model); columns (header, paper|ours|Δ), all formatted
    at the paper's precision, and the row's runs."""
    groups: dict[tuple, list[Run]] = {}
    for run in [*runs, *official_runs(spec, results)]:
        groups.setdefault(tuple(run.paper[f] for f in spec.rows), []).append(run)
    if not groups:  # e.g. the released table before any checkpoint exists: a table without rows
        return pd.DataFrame(columns=pd.MultiIndex.from_tuples([("Runs", "")]), index=pd.Index([], name="Model"))
    rows, index = [], []
    for group in groups.values():
        row = {}
        for column in spec.columns:
            metric = METRICS[column.metric]
            header = column.header or metric.header
            if column.official:
                row[(header, "")] = _official_value(spec, column, group, results)
                continue
            run, record = _cell(spec, column, group, results)
            paper = _paper(spec, column, run) if run is not None else None
            ours = metric.value(record) if record is not None else None
            row[(header, "paper")] = paper.text if paper else MISSING
            if ours is None:
                row[(header, "ours")] = row[(header, "Δ")] = MISSING
            elif paper is not None:
                row[(header, "ours")] = paper.format(ours)
                # smoke accuracies are the digits', not ImageNet's: beside the paper's, but no delta
                other_data = metric.trained and _data(record) not in (None, run.paper.get("data"))
                row[(header, "Δ")] = (MISSING if other_data or not metric.comparable
                                      else paper.format_delta(ours))
            else:
                row[(header, "ours")] = metric.fmt.format(ours) if metric.fmt else round_half_up(ours, metric.decimals)
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


def _data(record: Record) -> str | None:
    """The dataset a run trained or evaluated on (None: a measurement of the architecture)."""
    return getattr(record.payload, "data", None)


def _source(run: Run, record: Record | None) -> str:
    if record is None:
        return f"{run.run_id} (not run yet)"
    if record.imported:
        return f"{run.run_id} (imported from {Path(record.source_file).name})"
    return run.run_id


def provenance(spec: TableSpec, runs: list[Run], results: Path, profile: str) -> list[str]:
    """Lines saying where the reproduced numbers come from: profile, data, device, settings."""
    prof = get_profile(profile)
    records = [r for r in (complete_record(run, results) for run in runs) if r is not None]
    lines = [f"Reproduced columns: profile `{profile}` ({prof.description}); "
             f"{len(records)} of {len(runs)} runs complete.", *spec.notes]
    imported = [r for r in records if r.imported]
    trained = [r.payload for r in records if r.source == "trained"]
    if imported:
        lines.append(f"{len(imported)} run(s) imported from training logs (`python -m repnext.results import`): "
                     + ", ".join(sorted(Path(r.source_file).name for r in imported)) + ".")
    if trained:
        p = trained[0]
        epochs = sorted({t.epochs for t in trained})
        span = f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else f"{epochs[0]}"
        recipes = ", ".join(f"`{name}`" for name in sorted({t.recipe for t in trained}))
        lines.append(f"Trained here: {p.data_description}, {p.img_size} px, {span} epoch(s), recipe {recipes}"
                     + ("; accuracies on another dataset than the paper's are shown beside its values without a "
                        "delta." if prof.substitute_data else "."))
    machines = sorted({_device(r) for r in records if not r.imported})
    if machines:
        lines.append(f"Hardware of the reproduced numbers: {'; '.join(machines)}.")
    if records:
        p = (trained or [r.payload for r in records])[0]
        setting = p.paper_setting if isinstance(p, Classification) else None
        if setting:
            per_data = p.paper_settings
            classes = (", ".join(f"{s.num_classes} for {d}" for d, s in per_data.items()) if per_data
                       else str(setting.num_classes))
            lines.append(f"Params and MACs: the `{setting.fuse_mode}` inference form at {setting.img_size} px "
                         f"with {classes} classes, counted exactly (the paper's setting).")
        speed = p.throughput if isinstance(p, (Classification, Latency)) else None
        if speed:
            lines.append(f"Throughput: {speed.device}, batch {speed.batch}, {speed.form} form, "
                         f"{'channels_last' if speed.channels_last else 'NCHW'}, {speed.threads} thread(s); "
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
    frame = table_frame(spec, runs, results)
    notes = provenance(spec, runs, results, profile)
    paths = [atomic_write_text(out_dir / f"{spec.name}.md", to_markdown(spec, frame, notes)),
             atomic_write_text(out_dir / f"{spec.name}.tex", to_latex(spec, frame, notes))]
    for name in spec.figures:
        paths.extend(FIGURES[name](spec, runs, results, profile, out_dir))
    return paths


def _device(record: Record) -> str:
    env = record.environment
    if env is None:
        return "?"
    return f"{env.gpu} ({env.host})" if env.gpu else f"{env.cpu}, {env.threads} thread(s) ({env.host})"


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
        key = "imported from logs" if r.imported else f"measured on {_device(r)}"
        sources[key] = sources.get(key, 0) + 1
    scale = get_profile(profile)
    lines = [f"## {spec.title}", "",
             f"- Files: {', '.join(files + figures) or 'not rendered yet'}",
             f"- Profile `{profile}` ({scale.description}): {len(records)} of {len(unique)} runs complete"
             + ("; accuracies are the digits', not ImageNet's"
                if scale.substitute_data and any(r.source == "trained" for r in records) else ""),
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
