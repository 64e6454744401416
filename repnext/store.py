"""The results store: one folder per run, files written atomically (see DESIGN.md).

    <run>/config.json  <run>/log.txt  <run>/record.json  <run>/checkpoint.pth  <run>/run.ipynb

A run without record.json is unfinished (its checkpoint resumes it); a record's ``status`` is
``complete`` or ``failed``, its fields those of its kind in ``repnext.schema`` (``write_record`` checks them,
``read_record`` returns the typed record). Importing this module does not import torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from .errors import StoreError
from .files import atomic_write, atomic_write_text
from .schema import Record, parse_record

DEFAULT_RESULTS = Path(os.environ.get("REPNEXT_RESULTS", "results"))


class RunFile:
    """A ``RunPaths`` attribute: the path of one file of the run's folder."""

    def __init__(self, name: str):
        self.name = name

    @overload
    def __get__(self, paths: None, owner: type) -> RunFile: ...
    @overload
    def __get__(self, paths: RunPaths, owner: type) -> Path: ...

    def __get__(self, paths: RunPaths | None, owner: type) -> Path | RunFile:
        return self if paths is None else paths.root / self.name


@dataclass(frozen=True)
class RunPaths:
    root: Path
    config = RunFile("config.json")
    log = RunFile("log.txt")
    record = RunFile("record.json")
    checkpoint = RunFile("checkpoint.pth")
    notebook = RunFile("run.ipynb")
    stop = RunFile("stop.request")  # touched by a job's controller to ask the training for a checkpoint (preemption)


def write_json(path: Path, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_record(path: Path, record: dict) -> Path:
    """A run's record.json, checked against its kind's schema first (``repnext.schema``): a record the tables
    could not read is never written (the cell fails, naming the field)."""
    parse_record(record, path)
    return write_json(path, record)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None when there is no such file; a file that is not JSON raises naming it."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a JSON file; move it away")
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}); fix or delete it") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path} holds a JSON {type(obj).__name__}, not an object; fix or delete it")
    return obj


def read_record(path: Path) -> Record | None:
    """``path``'s record as a typed ``repnext.schema.Record``; None when there is no such file. A file that is
    not JSON, or not a record of a known kind, raises a ``StoreError`` naming it and the field."""
    obj = read_json(path)
    return None if obj is None else parse_record(obj, path)


def log_text(history: list[dict]) -> str:
    """log.txt in the DeiT/RepNeXt schema: one JSON object per epoch."""
    return "".join(json.dumps(entry) + "\n" for entry in history)


def write_log(path: Path, history: list[dict]) -> Path:
    return atomic_write_text(path, log_text(history))


def save_checkpoint(path: Path, state: dict) -> Path:
    """torch.save through ``atomic_write``: a crash leaves the previous checkpoint intact."""
    import torch  # here, not at the top: the job process and the runner read the store without torch

    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
