"""The measured counts behind ``paper_tables/models.md`` (``paper_tables/models.json``, written with it by
``python -m repnext.models --counts``): their record type, the fingerprint of what they were made from, and
reading them. Torch-free, so that ``make models`` finds them up to date without importing torch.

    python -m repnext.counts paper_tables/models.md paper_tables/models.json   # exit 0: up to date, 1: stale
"""
from __future__ import annotations

import functools
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from .reference import reference_path

MEASURED_COUNTS = Path(__file__).resolve().parents[1] / "paper_tables" / "models.json"
# what the counts are computed by: the models, their fusion, the counting and this file
COUNTING_SOURCES = ("models/*.py", "reparam.py", "complexity.py", "counts.py")


@dataclass(frozen=True)
class Complexity:
    model: str
    num_classes: int
    img_size: int
    fuse_mode: str
    train_params: int
    fused_params: int
    macs: int

    def as_dict(self) -> dict:
        return asdict(self)


def counting_fingerprint() -> str:
    """What the counts depend on: the sources of the models, their fusion and the counting; timm's and torch's
    versions (timm's baselines, torch's FLOP counter), read from the installed metadata."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"timm {version('timm')} torch {version('torch')}".encode())
    for path in sorted(p for pattern in COUNTING_SOURCES for p in here.glob(pattern)):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def sources_fingerprint() -> dict[str, str]:
    """What ``models.md`` and ``models.json`` are made from: the counting, and the paper's values the table
    prints beside the counts."""
    return {"fingerprint": counting_fingerprint(),
            "reference": hashlib.sha256(reference_path().read_bytes()).hexdigest()[:16]}


def up_to_date(table: Path, counts: Path) -> bool:
    """Whether both files exist and were made from the present sources (a fresh clone's are: no recount)."""
    try:
        saved = json.loads(counts.read_text())
    except (OSError, ValueError):
        return False
    return table.is_file() and all(saved.get(k) == v for k, v in sources_fingerprint().items())


@functools.cache
def measured_counts(path: Path = MEASURED_COUNTS) -> dict[tuple, Complexity]:
    """The counts of ``path`` by (model, num_classes, img_size, fuse_mode); none when the file is missing or was
    measured by other code or versions than these (its fingerprint differs)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    if data.get("fingerprint") != counting_fingerprint():
        return {}
    counts = [Complexity(**c) for c in data["counts"]]
    return {(c.model, c.num_classes, c.img_size, c.fuse_mode): c for c in counts}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m repnext.counts TABLE.md COUNTS.json (exit 0: up to date, 1: stale)")
    sys.exit(0 if up_to_date(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
