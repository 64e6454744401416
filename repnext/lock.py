"""One process per run folder: an exclusive ``flock`` on ``<run>/.lock``, which holds the owner's pid (and is
emptied on release).

The kernel drops a flock when its process dies, however it dies, so a killed run leaves no stale lock; the
file itself stays (removing it would race with the next owner).
"""
from __future__ import annotations

import fcntl
import functools
import os
import socket
from collections.abc import Callable
from pathlib import Path

from .errors import RepnextError, StoreError


class RunLockedError(RepnextError):
    """Another process is running in this folder."""


class RunLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"output folder {self.path.parent} is not writable ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by process {holder}; wait for it to end, stop "
                                 "it (it resumes), or choose another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # no pid of a process that no longer holds it
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def holds_run_lock(is_main: Callable[[], bool], check: Callable[[object], object]) -> Callable[[Callable], Callable]:
    """Run ``fn(config, output, ...)`` holding ``output``'s lock, once ``check(config)`` has passed (before the
    folder is created); under DDP the process for which ``is_main()`` is true holds it for all ranks.
    ``wait_for_lock=True`` waits for the holder instead of refusing (runs sharing one teacher)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(config, output, *args, wait_for_lock: bool = False, **kwargs):
            check(config)
            if not is_main():
                return fn(config, output, *args, **kwargs)
            folder = Path(output).expanduser()
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create output folder {folder}: {e.strerror}") from None
            lock = RunLock(folder).acquire(wait_for_lock)
            try:
                return fn(config, output, *args, **kwargs)
            finally:
                lock.release()

        return wrapper

    return decorate
