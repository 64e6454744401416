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

from .errors import StoreError
from .files import atomic_write_text, write_failure

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


def write_log(path: Path, history: list[dict]) -> Path:
    """log.txt in the DeiT/RepNeXt schema: one JSON object per epoch."""
    return atomic_write_text(path, "".join(json.dumps(entry) + "\n" for entry in history))


def save_checkpoint(path: Path, state: dict) -> Path:
    """torch.save to a temporary name, then rename: a crash leaves the previous checkpoint intact."""
    import torch  # here: the store's paths and JSON files serve command lines that must not wait for torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch reports a full disk as "[enforce fail ...] unexpected pos"
            raise write_failure(path, e) from None
        raise
    return path


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


if __name__ == "__main__":  # python -m repnext.results import PATH...: official logs -> records
    import sys

    from .logs import main

    sys.exit(main())
