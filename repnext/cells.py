"""The one contract of a table cell: what each notebook of ``notebooks/`` calls, once, to run its run.

A cell is ``run_cell(config, output, *, <the table's parameters>) -> dict``: the run's ``RunConfig`` (or its
dict), its folder in the results store, then keyword-only parameters with plain values (a spec's per-profile
values are resolved when it expands, ``ablations.spec.TableSpec.expand``); it writes the run's ``record.json``
and returns the record. The notebook's parameters cell names ``config``, ``output``, ``paper`` and exactly the
cell's keyword parameters, and passes each of those by name (``tests/test_cells.py`` checks every notebook).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Protocol

from .config import RunConfig


class CellFn(Protocol):
    def __call__(self, config: RunConfig | dict, output: str | Path, /, **params: Any) -> dict: ...


def cell_parameters(cell: CellFn) -> tuple[str, ...]:
    """The keyword parameters of ``cell``; TypeError (naming what differs) if it breaks the contract."""
    name = getattr(cell, "__qualname__", repr(cell))
    params = list(inspect.signature(cell).parameters.values())
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional != ["config", "output"]:
        raise TypeError(f"{name}: the positional parameters must be (config, output), not ({', '.join(positional)})")
    other = [p.name for p in params[2:] if p.kind != p.KEYWORD_ONLY]
    if other:
        raise TypeError(f"{name}: after (config, output) only keyword-only parameters, not {other}")
    returns = inspect.signature(cell).return_annotation
    if returns not in (dict, "dict"):
        raise TypeError(f"{name}: must return the run's record (-> dict), not {returns!r}")
    return tuple(p.name for p in params[2:])
