"""The paper's own numbers, read from ``paper_tables/reference.csv`` (the one place they are typed).

Each value keeps the text the paper printed, so "matches at the paper's precision" means: the measured
number, formatted with as many decimals as the paper printed, reads the same.
"""
from __future__ import annotations

import csv
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path

from .config import PAPER_NUM_CLASSES

REPO_REFERENCE = Path(__file__).resolve().parents[1] / "paper_tables" / "reference.csv"

# the dataset behind each reference table, where it is not ImageNet-1K (its class count: PAPER_NUM_CLASSES)
TABLE_DATA = {"compact_cifar100": "cifar100"}
# which inference form each table counted: the README's main tables count the official fuse (post-mixer
# BatchNorms kept: M1E 5,255,080 -> 5.3M, fully folded 5,245,520 would print 5.2M); the compact-model
# tables count the fully folded form (M0 2.328M, not 2.333M). The one place: a table spec's runs count with
# their reference table's (ablations.spec), and so do `make models` and the imported logs.
TABLE_FUSE_MODE = {"compact_cifar100": "full", "compact_imagenet": "full"}


def table_fuse_mode(table: str) -> str:
    """The inference form whose params/MACs the paper's reference table ``table`` reports."""
    return TABLE_FUSE_MODE.get(table, "official")


def table_num_classes(table: str) -> int:
    """The class count of the dataset behind the paper's reference table ``table``."""
    return PAPER_NUM_CLASSES[TABLE_DATA.get(table, "imagenet")]


def round_half_up(value: float, decimals: int, sign: bool = False) -> str:
    """``value`` printed with ``decimals`` places, rounded half-up from its decimal text as the paper rounds:
    0.4055 -> 40.6 % and 0.6345 -> 63.5 %, where ``f"{x:.1f}"`` rounds the binary value (40.5, 63.4).
    The text has 15 significant digits, all a float holds exactly, so arithmetic noise (0.6345 * 100 =
    63.449999999999996) does not move a half. ``sign``: a leading + on values >= 0 (deltas)."""
    if not math.isfinite(value):
        return f"{value:+}" if sign else f"{value}"
    rounded = Decimal(f"{float(value):.15g}").quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    text = f"{rounded.copy_abs() if rounded.is_zero() else rounded:f}"  # no "-0.0"
    return f"+{text}" if sign and not text.startswith("-") else text


@dataclass(frozen=True)
class PaperValue:
    table: str
    model: str
    metric: str
    text: str
    source: str

    @property
    def value(self) -> float:
        return float(self.text)

    @property
    def decimals(self) -> int:
        return len(self.text.partition(".")[2])

    def format(self, measured: float) -> str:
        """``measured`` at the paper's printed precision."""
        return round_half_up(measured, self.decimals)

    def matches(self, measured: float) -> bool:
        return self.format(measured) == self.text

    def delta(self, measured: float) -> float:
        """Ours as printed minus the paper's, exact at the paper's precision."""
        return float(Decimal(self.format(measured)) - Decimal(self.text))

    def format_delta(self, measured: float) -> str:
        return round_half_up(self.delta(measured), self.decimals, sign=True)


def reference_path() -> Path:
    """The checkout's ``paper_tables/reference.csv``, else the copy a wheel install carries."""
    if REPO_REFERENCE.is_file():
        return REPO_REFERENCE
    packaged = resources.files("repnext") / "paper_reference.csv"
    with resources.as_file(packaged) as path:
        if Path(path).is_file():
            return Path(path)
    raise FileNotFoundError(f"paper reference table not found at {REPO_REFERENCE} nor inside the package")


@functools.cache
def load_reference() -> tuple[PaperValue, ...]:
    with reference_path().open(newline="") as f:
        return tuple(
            PaperValue(row["table"], row["model"], row["metric"], row["value"], row["source"])
            for row in csv.DictReader(f)
        )


def paper_values(table: str | Sequence[str] | None = None, model: str | None = None, metric: str | None = None
                 ) -> list[PaperValue]:
    """Values by table (one name, or several: the first table holding the model/metric wins), model, metric."""
    if table is not None and not isinstance(table, str):
        for name in table:
            found = paper_values(name, model, metric)
            if found:
                return found
        return []
    return [
        v for v in load_reference()
        if (table is None or v.table == table) and (model is None or v.model == model)
        and (metric is None or v.metric == metric)
    ]


def paper_value(table: str, model: str, metric: str) -> PaperValue:
    found = paper_values(table, model, metric)
    if len(found) != 1:
        tables = sorted({v.table for v in load_reference()})
        raise KeyError(f"no single paper value for table={table!r} model={model!r} metric={metric!r} "
                       f"({len(found)} found; tables: {', '.join(tables)})")
    return found[0]
