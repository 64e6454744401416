"""Notebook workers for the local executor: each worker is one submitit job holding one Jupyter kernel, and it
executes the runs it claims from a queue folder one after another.

A job per run starts a fresh kernel per run and pays its imports (torch, timm, the project, matplotlib) every
time; a worker pays them once. Every run still gets its own executed notebook, and the kernel's namespace is
reset and its working directory set to the run's folder before each one. The queue is plain files, so the
runner, the workers and a re-run agree without a server: a task is claimed by renaming it (atomic, one
winner), and finished by writing its result.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from repnext.files import atomic_write_text

from .job import NotebookTask, execute_notebook, run_status

POLL_S = 0.5
KERNEL_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class TaskQueue:
    """``todo/`` holds the tasks not claimed yet, ``claimed/`` those a worker took, ``done/`` their results;
    ``closed``: no task will be added (workers end when ``todo/`` is empty); ``stop``: claim nothing more."""
    folder: Path

    def __post_init__(self):
        for name in ("todo", "claimed", "done"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)

    def put(self, key: str, task: NotebookTask) -> None:
        """Queue ``task`` under ``key`` (tasks are claimed in the order of their keys)."""
        atomic_write_text(self.folder / "todo" / f"{key}.json", json.dumps(dataclasses.asdict(task)))

    def claim(self) -> tuple[str, NotebookTask] | None:
        for path in sorted((self.folder / "todo").glob("*.json")):
            target = self.folder / "claimed" / path.name
            try:
                path.rename(target)
            except FileNotFoundError:  # another worker took it first
                continue
            return path.stem, NotebookTask(**json.loads(target.read_text()))
        return None

    def finish(self, key: str, result: dict) -> None:
        atomic_write_text(self.folder / "done" / f"{key}.json", json.dumps(result))

    def result(self, key: str) -> dict | None:
        try:
            return json.loads((self.folder / "done" / f"{key}.json").read_text())
        except FileNotFoundError:
            return None

    def claimed(self, key: str) -> bool:
        return (self.folder / "claimed" / f"{key}.json").exists()

    def close(self) -> None:
        (self.folder / "closed").touch()

    def stop(self) -> None:
        (self.folder / "stop").touch()

    @property
    def closed(self) -> bool:
        return (self.folder / "closed").exists()

    @property
    def stopped(self) -> bool:
        """Asked to stop, or the runner's submission folder is gone (it ended)."""
        return (self.folder / "stop").exists() or not self.folder.is_dir()


class NotebookWorker:
    """A submitit job: claim a task, execute its notebook in this worker's kernel, write its result; until the
    queue is closed and empty, or stopped."""

    def __call__(self, queue: TaskQueue) -> list[dict]:
        from jupyter_client.manager import KernelManager

        # nbclient waits on the kernel with an async client: only then can it notice a kernel that died mid-cell
        km = KernelManager(client_class="jupyter_client.asynchronous.AsyncKernelClient")
        done = []
        try:
            while not queue.stopped:
                item = queue.claim()
                if item is None:
                    if queue.closed:
                        break
                    time.sleep(POLL_S)
                    continue
                key, task = item
                if not km.is_alive():  # first task, or the last one's notebook killed the kernel
                    km.start_kernel()
                result = self._execute(task, km)
                queue.finish(key, result)
                done.append(result)
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        return done

    @staticmethod
    def _execute(task: NotebookTask, km) -> dict:
        started = time.time()
        error = {}
        try:
            reset_kernel(km, task.folder)
            execute_notebook(task, task.executed, km=km)
        except Exception as e:  # the run's failure, reported by the runner; the worker goes on
            error = {"error": str(e)}
        return {"run_id": task.run_id, "status": run_status(task.record), "pid": os.getpid(), "started": started,
                "ended": time.time(), **error}


def reset_kernel(km, folder: str) -> None:
    """A clean namespace (the imported modules stay: that is the saving) in the run's folder, as a new kernel
    started there would have."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=KERNEL_START_TIMEOUT_S)
        reply = kc.execute_interactive(
            f"%reset -f\nimport matplotlib.pyplot as _plt, os as _os\n_plt.close('all'); _os.chdir({folder!r})\n"
            "del _plt, _os", timeout=KERNEL_START_TIMEOUT_S, output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"resetting the kernel for {folder} failed: {reply['content'].get('evalue')}")
    finally:
        kc.stop_channels()
