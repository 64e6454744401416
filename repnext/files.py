"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import StoreError
from .messages import first_line


def write_failure(path: Path, error: BaseException) -> StoreError:
    """One line for a write that failed: the path, and whether the disk is full (what torch.save does not say)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < 1 << 20):
        reason = f"no space left on device ({free / 2**20:.1f} MiB free)" if free is not None else "no space left"
        return StoreError(f"cannot write {path}: {reason}; the previous version, if any, is intact")
    reason = getattr(error, "strerror", None) or first_line(error)
    return StoreError(f"cannot write {path}: {reason}; the previous version, if any, is intact")


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(f)`` into a temporary file beside ``path``, flushed to disk, then renamed over ``path``; the
    file gets the mode of any file this process creates (0o666 less the umask), not mkstemp's 0600, which
    would hide results from the group on a shared file system."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        # torch.save on a full disk says "[enforce fail ...] unexpected pos": free space is read before the
        # partial file is removed, while the disk is still full
        failure = write_failure(path, e) if isinstance(e, (OSError, RuntimeError)) else None
        Path(tmp).unlink(missing_ok=True)
        if failure is not None:
            raise failure from None
        raise
    _fsync_dir(path.parent)  # the rename itself survives a crash
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))
