"""Table specs: a paper table as data (``ablations/specs/<table>.toml``) and its expansion into runs.

A spec names the table's notebook, its rows in ``paper_tables/reference.csv``, the metrics it reports and a
grid of ``RunConfig`` fields (models x recipes x epochs x ...) at the paper's scale. A profile scales each
cell (``Profile.epochs_for``, ``Profile.dataset_for``); the run id is the hash of the scaled config. The
notebook's parameters (``[parameters]``) are resolved for the profile there too (``{smoke = 2, full = 20}`` ->
2), so a cell (``repnext.cells``) gets plain values; its ``fuse_mode`` is the reference table's
(``repnext.reference.table_fuse_mode``), not the spec's.
"""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import functools
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from repnext.config import RunConfig
from repnext.errors import RepnextError
from repnext.profiles import PROFILES, for_profile, get_profile
from repnext.recipes import get_recipe
from repnext.reference import table_fuse_mode

from . import NOTEBOOKS, SPECS

CONFIG_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
# the notebook parameters the runner sets for every run (ablations.runner.notebook_task), never a spec's
RUNNER_PARAMETERS = ("config", "output", "paper", "side_by_side")
# notebook parameters derived from the spec's reference table, never given in a spec
DERIVED_PARAMETERS = {"fuse_mode": "repnext.reference.TABLE_FUSE_MODE, by the spec's reference table"}


class SpecError(RepnextError):
    pass


@dataclass(frozen=True)
class Run:
    """One cell of a table under one profile."""
    table: str
    config: RunConfig
    paper: dict          # the cell as the paper ran it (model, recipe, data, epochs, distillation ...)
    parameters: dict     # the notebook's parameters besides config and output, resolved for the profile

    @property
    def run_id(self) -> str:
        return self.config.run_id

    def folder(self, results: Path) -> Path:
        return results / self.table / self.run_id


@dataclass(frozen=True)
class Column:
    """A reported quantity: ``metric`` (an ``ablations.records.METRICS`` name) of the row's run whose paper
    fields match ``where`` (e.g. ``{distillation = true}``), beside reference.csv's ``reference`` value."""
    metric: str
    reference: str       # "" when the paper does not report it
    where: dict = field(default_factory=dict)
    header: str | None = None
    reference_table: str | list[str] | None = None  # None: the spec's; a list: the first holding the row
    reference_model: str | None = None  # a template on the row's model, e.g. "{model}e"; None: the model
    from_table: str | None = None  # the value comes from that table's run of ``reference_model`` (same profile)
    official: bool = False  # the value is the imported official log's, of the paper-scale cell, in every profile


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    notebook: str
    reference: str | list[str]  # table(s) of reference.csv; a list: the first holding the row's model
    columns: tuple[Column, ...]
    grid: dict
    rows: tuple[str, ...] = ("model",)  # the paper fields that make a row; the others spread over columns
    labels: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    figures: tuple[str, ...] = ()  # names in ablations.figures.FIGURES, drawn after the table
    notes: tuple[str, ...] = ()  # printed under the table: how its numbers are measured
    official_models: tuple[str, ...] = ()  # rows only from imported official logs (paper-scale cells, never run)
    # its runs time models against each other: the runner measures them all in one job (the notebook gets
    # them as ``side_by_side``), again all together if any is missing, and runs no other job beside it
    exclusive: bool = False
    after: tuple[str, ...] = ()  # tables whose runs this one's are made from: it is expanded and run after them

    @property
    def notebook_path(self) -> Path:
        return NOTEBOOKS / f"{self.notebook}.ipynb"

    def expand(self, profile: str, only: str | None = None) -> list[Run]:
        """The table's runs under ``profile``, in grid order; ``only``: a glob on model name or run id."""
        prof = get_profile(profile)
        keys = list(self.grid)
        # a field may list its values per profile ({smoke = [...], full = [...]}): e.g. the gradcam figure
        # shows a model trained here in smoke and the paper's released models in full
        axes = [self.grid[k][profile] if isinstance(self.grid[k], dict) else self.grid[k] for k in keys]
        parameters = self.run_parameters(profile)
        runs = []
        for values in itertools.product(*axes):
            paper = dict(zip(keys, values))
            cell = dict(paper, profile=profile)
            if "data" in cell:
                cell["data"] = prof.dataset_for(cell["data"])
            if "epochs" in cell:
                cell["epochs"] = prof.epochs_for(cell["epochs"], get_recipe(cell.get("recipe", "repvit")).epochs)
            config = RunConfig(**cell)
            if only and not (fnmatch.fnmatch(config.model, only) or fnmatch.fnmatch(config.run_id, only)):
                continue
            runs.append(Run(self.name, config, paper, dict(parameters)))
        return runs

    def run_parameters(self, profile: str) -> dict:
        """The notebook's parameters of every run under ``profile``: the spec's, each per-profile value resolved,
        and the fuse mode of the spec's (first) reference table where the notebook counts params and MACs."""
        parameters = for_profile(self.parameters, profile)
        if "fuse_mode" in notebook_parameters(self.notebook_path):
            first = self.reference if isinstance(self.reference, str) else self.reference[0]
            parameters["fuse_mode"] = table_fuse_mode(first)
        return parameters

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.metric for c in self.columns))

    def label(self, run: Run) -> str:
        return self.labels.get(run.config.model, run.config.model)


@functools.cache
def notebook_parameters(path: Path) -> tuple[str, ...]:
    """The names the notebook's ``parameters`` cell assigns: what papermill sets in it."""
    cells = json.loads(path.read_text())["cells"]
    source = next(("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), "")
    return tuple(t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name))


def _check_parameters(path: Path, parameters: dict, notebook: Path) -> None:
    """A spec's [parameters]: the notebook's own, none the runner or the reference table sets, and a per-profile
    value (``{smoke = .., full = ..}``, at any depth) for every profile."""
    derived = sorted(set(parameters) & set(DERIVED_PARAMETERS))
    if derived:
        raise SpecError(f"{path}: [parameters] {derived} come from {DERIVED_PARAMETERS[derived[0]]}; remove them")
    accepted = sorted(set(notebook_parameters(notebook)) - set(RUNNER_PARAMETERS) - set(DERIVED_PARAMETERS))
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise SpecError(f"{path}: [parameters] {unknown} are not parameters of {notebook.name}; "
                        f"accepted: {accepted}")

    def walk(key: str, value) -> None:
        if not isinstance(value, dict):
            return
        if value and set(value) <= set(PROFILES) and set(value) != set(PROFILES):
            raise SpecError(f"{path}: parameter {key!r} lists values for {sorted(value)}; a per-profile value "
                            f"needs every profile: {sorted(PROFILES)}")
        for k, v in value.items():
            walk(f"{key}.{k}", v)

    for key, value in parameters.items():
        walk(key, value)


def available_tables() -> list[str]:
    return sorted(p.stem for p in SPECS.glob("*.toml"))


def load_spec(name: str, folder: Path = SPECS) -> TableSpec:
    path = folder / f"{name}.toml"
    if not path.is_file():
        raise SpecError(f"unknown table {name!r}; expected one of: {', '.join(available_tables())}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: {e}") from None
    grid = data.get("grid", {})
    unknown = set(grid) - CONFIG_FIELDS
    if unknown or "model" not in grid:
        raise SpecError(f"{path}: grid fields must be RunConfig fields including 'model'; "
                        f"unknown: {sorted(unknown)}; allowed: {sorted(CONFIG_FIELDS)}")
    # `metrics = [...]` is shorthand for columns whose reference metric has the same name
    columns = [Column(m, m) for m in data.get("metrics", [])]
    try:
        columns += [Column(**{"reference": c["metric"], **c}) for c in data.get("columns", [])]
    except TypeError as e:
        raise SpecError(f"{path}: bad [[columns]] entry ({e}); keys: metric, reference, where, header, "
                        "reference_table, reference_model, from_table, official") from None
    for key, values in grid.items():
        if isinstance(values, dict) and set(values) != set(PROFILES):
            raise SpecError(f"{path}: grid field {key!r} lists values for {sorted(values)}; a per-profile field "
                            f"needs every profile: {sorted(PROFILES)}")
    rows = tuple(data.get("rows", ("model",)))
    if set(rows) - set(grid):
        raise SpecError(f"{path}: rows {sorted(set(rows) - set(grid))} are not grid fields")
    spec = TableSpec(name=name, title=data["title"], notebook=data["notebook"], reference=data["reference"],
                     columns=tuple(columns), grid=grid, rows=rows, labels=data.get("labels", {}),
                     parameters=data.get("parameters", {}), figures=tuple(data.get("figures", ())),
                     notes=tuple(data.get("notes", ())), official_models=tuple(data.get("official_models", ())),
                     exclusive=bool(data.get("exclusive", False)), after=tuple(data.get("after", ())))
    if not spec.notebook_path.is_file():
        raise SpecError(f"{path}: notebook {spec.notebook_path} does not exist")
    _check_parameters(path, spec.parameters, spec.notebook_path)
    return spec
