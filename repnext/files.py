"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import StoreError


def write_failure(path: Path, error: BaseException) -> StoreError:
    """One line for a write that failed: the path, and whether the disk is full (what torch.save does not say)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < 1 << 20):
        reason = f"no space left on device ({free / 2**20:.1f} MiB free)" if free is not None else "no space left"
        return StoreError(f"cannot write {path}: {reason}; the previous version, if any, is intact")
    reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0] or type(error).__name__
    return StoreError(f"cannot write {path}: {reason}; the previous version, if any, is intact")


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the group on a shared file system
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_failure(path, e) from None
        raise
    return path
