"""The ``released`` table's cells evaluate checkpoint files: the official releases named in the models'
pretrained cfgs (full profile, from ``--checkpoints DIR``), or the checkpoints the ``imagenet`` table trained
(profiles on substitute data: same cells, same run ids). A cell whose file is missing is named and left out;
the others still run."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from repnext.profiles import get_profile
from repnext.store import RunPaths

from .render import complete_record
from .spec import Run, load_spec


def _source_runs(profile: str) -> tuple[str, dict[str, Run]]:
    """The table whose runs the smoke profile evaluates (the one the released spec runs ``after``), and its runs
    by id."""
    table = load_spec("released").after[0]
    return table, {run.run_id: run for run in load_spec(table).expand(profile)}


def _release_file(run: Run) -> str | None:
    """The release file of the run's cell (the models' pretrained cfgs: timm, so torch; only the full profile
    asks, and a smoke table renders without them)."""
    from repnext.validate import release_file

    return release_file(run.config.model, run.config.recipe, run.config.distillation)


def _release_checkpoints(runs: list[Run], checkpoints: Path) -> dict[str, Path]:
    files = {run.run_id: _release_file(run) for run in runs}
    return {run_id: checkpoints / name for run_id, name in files.items() if name is not None}


def _trained_checkpoints(runs: list[Run], source: dict[str, Run], results: Path) -> dict[str, Path]:
    return {run.run_id: RunPaths(source[run.run_id].folder(results)).checkpoint
            for run in runs if run.run_id in source}


def released_runs(runs: list[Run], profile: str, results: Path, checkpoints: Path | None) -> list[Run]:
    """The cells that have a checkpoint file, each with its path as the notebook's ``checkpoint``; one line
    names the missing files."""
    if get_profile(profile).substitute_data:
        table, source = _source_runs(profile)
        wanted = _trained_checkpoints(runs, source, results)
        found = {i: p for i, p in wanted.items() if p.is_file() and complete_record(source[i], results)}
        where = f"not trained yet by the {table} table (run --table {table} first)"
    else:
        if checkpoints is None:  # rendering only (run.py asks for --checkpoints before submitting): the releases
            return [run for run in runs if _release_file(run)]
        wanted = _release_checkpoints(runs, checkpoints)
        found = {i: p for i, p in wanted.items() if p.is_file()}
        where = f"not in {checkpoints}"
    missing = sorted({str(p) if get_profile(profile).substitute_data else p.name
                      for i, p in wanted.items() if i not in found})
    if missing:
        print(f"released: {len(missing)} of {len(wanted)} checkpoints {where}: {', '.join(missing)}; "
              f"evaluating the other {len(found)}")
    return [dataclasses.replace(run, parameters={**run.parameters, "checkpoint": str(found[run.run_id])})
            for run in runs if run.run_id in found]
