"""``python -m repnext.models``: params and MACs of every model, measured, beside the paper's values.

Params are counted in the training form and in the fused form (``reparameterize_model``); MACs are the
fused form's at 224x224, the paper's convention. The paper's numbers come from paper_tables/reference.csv.
``--counts`` also writes the exact counts (JSON, with ``counting_fingerprint``): the runs of the tables read
them there instead of counting again (``repnext.complexity.complexity``).
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..complexity import measure
from ..counts import Complexity, sources_fingerprint
from ..files import atomic_write_text
from ..reference import PaperValue, paper_values, table_fuse_mode, table_num_classes
from . import REGISTERED_MODELS

PARAM_METRICS = ("params_m_fine", "params_m")  # finest printed precision first


@dataclass
class ModelRow:
    table: str
    model: str
    num_classes: int
    fuse_mode: str
    paper_params: PaperValue | None = None
    paper_gmacs: PaperValue | None = None
    measured: Complexity | None = None

    @property
    def params_ok(self) -> bool | None:
        if self.paper_params is None:
            return None
        return self.paper_params.matches(self.measured.fused_params / 1e6)

    @property
    def gmacs_ok(self) -> bool | None:
        if self.paper_gmacs is None:
            return None
        return self.paper_gmacs.matches(self.measured.macs / 1e9)


def model_rows() -> list[ModelRow]:
    """One row per (paper table, model) with reported params/MACs, then every other registered model."""
    rows: dict[tuple[str, str], ModelRow] = {}
    for ref in paper_values():
        if ref.metric not in (*PARAM_METRICS, "gmacs"):
            continue
        row = rows.setdefault((ref.table, ref.model), ModelRow(
            ref.table, ref.model, table_num_classes(ref.table), table_fuse_mode(ref.table)))
        if ref.metric == "gmacs":
            row.paper_gmacs = ref
        elif row.paper_params is None or PARAM_METRICS.index(ref.metric) < PARAM_METRICS.index(
                row.paper_params.metric):
            row.paper_params = ref
    listed = {model for _, model in rows}
    for model in REGISTERED_MODELS:
        if model not in listed:
            rows[("-", model)] = ModelRow("-", model, table_num_classes("-"), table_fuse_mode("-"))
    return list(rows.values())


def measure_rows(rows: list[ModelRow], progress: bool = True) -> list[ModelRow]:
    cached = functools.cache(measure)
    for row in tqdm(rows, desc="measuring", unit="model", disable=not progress, file=sys.stderr):
        row.measured = cached(row.model, row.num_classes, fuse_mode=row.fuse_mode)
    return rows


HEADER = ("table", "model", "classes", "fused form", "params train (M)", "params fused (M)", "paper params (M)",
          "GMACs", "paper GMACs", "matches paper")


def _cells(row: ModelRow) -> tuple[str, ...]:
    m = row.measured
    checks = [ok for ok in (row.params_ok, row.gmacs_ok) if ok is not None]
    verdict = "-" if not checks else ("yes" if all(checks) else "NO")
    return (
        row.table, row.model, str(row.num_classes), row.fuse_mode, f"{m.train_params / 1e6:.3f}",
        f"{m.fused_params / 1e6:.3f}", row.paper_params.text if row.paper_params else "-",
        f"{m.macs / 1e9:.3f}", row.paper_gmacs.text if row.paper_gmacs else "-", verdict,
    )


def render(rows: list[ModelRow], fmt: str = "md") -> str:
    cells = [_cells(r) for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([HEADER, *cells])
        return out.getvalue()
    widths = [max(len(c[i]) for c in [HEADER, *cells]) for i in range(len(HEADER))]
    line = lambda c: "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADER), sep, *map(line, cells)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repnext.models", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("md", "csv"), default="md")
    parser.add_argument("--output", type=Path, help="also write the table to this file (atomically)")
    parser.add_argument("--counts", type=Path, help="also write the exact counts as JSON (paper_tables/models.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    rows = measure_rows(model_rows(), progress=not args.quiet)
    text = render(rows, args.format)
    sys.stdout.write(text)
    notes = [
        f"{r.model} in {r.table}: {what} {mine:.4f} vs paper {ref.text}"
        for r in rows
        for what, ok, ref, mine in (
            ("params (M)", r.params_ok, r.paper_params, r.measured.fused_params / 1e6),
            ("GMACs", r.gmacs_ok, r.paper_gmacs, r.measured.macs / 1e9),
        )
        if ok is False
    ]
    for note in notes:
        print(f"differs at the paper's precision: {note:.80s}", file=sys.stderr)
    if args.output:
        if args.format == "md":
            text = (
                "# Model complexity: measured beside the paper\n\n"
                "Generated by `python -m repnext.models`. Params: training form and fused form (the form "
                "each paper table counted); GMACs: fused form at 1x3x224x224, convolutions and linear "
                "layers. Paper values: `paper_tables/reference.csv`.\n\n" + text
                + "".join(f"\n* differs at the paper's precision: {n}" for n in notes)
                + ("\n" if notes else "")
            )
        atomic_write_text(args.output, text)
    if args.counts:
        counts = list({r.measured: None for r in rows})  # one per setting: tables share models
        atomic_write_text(args.counts, json.dumps({**sources_fingerprint(), "counts": [c.as_dict() for c in counts]},
                                                  indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
