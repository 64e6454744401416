"""The results store: one folder per run, files written atomically (see DESIGN.md).

    <run>/config.json  <run>/log.txt  <run>/record.json  <run>/checkpoint.pth  <run>/run.ipynb

A run without record.json is unfinished (its checkpoint resumes it); a record's ``status`` is
``complete`` or ``failed``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .files import atomic_write_text

DEFAULT_RESULTS = Path(os.environ.get("REPNEXT_RESULTS", "results"))


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def record(self) -> Path:
        return self.root / "record.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pth"

    @property
    def notebook(self) -> Path:
        return self.root / "run.ipynb"

    @property
    def stop(self) -> Path:
        """Touched by a job's controller to ask the running training for a checkpoint (preemption)."""
        return self.root / "stop.request"


def write_json(path: Path, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_log(path: Path, history: list[dict]) -> Path:
    """log.txt in the DeiT/RepNeXt schema: one JSON object per epoch."""
    return atomic_write_text(path, "".join(json.dumps(entry) + "\n" for entry in history))


def save_checkpoint(path: Path, state: dict) -> Path:
    """torch.save to a temporary name, then rename: a crash leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


if __name__ == "__main__":  # python -m repnext.results import PATH...: official logs -> records
    import sys

    if any(arg.endswith(".json") for arg in sys.argv[1:]):  # mmdet/mmseg logs: the dense tables
        from .dense.official_logs import main
    else:
        from .logs import main

    sys.exit(main())
