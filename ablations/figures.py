"""Figures drawn from the results store after a table, by name (a spec's ``figures = [...]``). Each takes
(spec, runs, results, profile, out_dir) and returns the files it wrote (PNG and PDF)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .spec import Run, TableSpec

Figure = Callable[[TableSpec, list[Run], Path, str, Path], list[Path]]

FIGURES: dict[str, Figure] = {}
