"""The paper's own numbers, read from ``paper_tables/reference.csv`` (the one place they are typed).

Each value keeps the text the paper printed, so "matches at the paper's precision" means: the measured
number, formatted with as many decimals as the paper printed, reads the same.
"""
from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

REPO_REFERENCE = Path(__file__).resolve().parents[1] / "paper_tables" / "reference.csv"


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
        return f"{measured:.{self.decimals}f}"

    def matches(self, measured: float) -> bool:
        return self.format(measured) == self.text

    def delta(self, measured: float) -> float:
        return round(float(self.format(measured)) - self.value, self.decimals)


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
