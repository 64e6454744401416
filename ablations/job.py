"""The job: papermill executes the table's notebook for one run; checkpoint and requeue on preemption.

The notebook's kernel is a child process, so on SLURM's USR2 (time-out or preemption) the job asks the
training inside it for a checkpoint through the run's stop file (``RunPaths.stop``, polled after every
step), waits for it, and lets submitit requeue the job; the next attempt resumes from that checkpoint.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

CHECKPOINT_WAIT_S = 60.0  # how long a preempted job waits for the training to write its checkpoint
REQUEUE_WAIT_S = CHECKPOINT_WAIT_S + 30  # how long the other ranks wait for rank 0's requeue to end them


@dataclass(frozen=True)
class NotebookTask:
    """One run's execution. The run folder's file names come from ``repnext.store.RunPaths`` (the runner
    fills them in), so the job process does not import torch just to know them: 4.5 s a job."""
    run_id: str
    notebook: str        # the table's notebook (absolute path)
    folder: str          # the run's folder in the results store
    parameters: dict     # papermill parameters: config, output and the table's own
    executed: str        # where the executed notebook goes (rank 0)
    record: str
    checkpoint: str
    stop: str            # touched to ask the training for a checkpoint


def run_status(record: str) -> str:
    try:
        return json.loads(Path(record).read_text()).get("status", "missing")
    except (FileNotFoundError, json.JSONDecodeError):
        return "missing"


def _touched_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def execute_notebook(task: NotebookTask, output: str, km=None) -> None:
    """papermill executes the task's notebook into ``output``: in a kernel of its own started in the run's
    folder, or in ``km``'s running kernel (``ablations.pool``; the caller has moved it to the folder)."""
    import papermill as pm

    where = {"km": km} if km is not None else {"cwd": task.folder}
    pm.execute_notebook(task.notebook, output, parameters=task.parameters, progress_bar=False, log_output=True,
                        **where)


class NotebookJob(submitit.helpers.Checkpointable):
    """Run one notebook execution; every task of a multi-task (DDP) job executes its own kernel."""

    def __call__(self, task: NotebookTask) -> dict:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # DDP: MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for the kernel to inherit
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        folder = Path(task.folder)
        folder.mkdir(parents=True, exist_ok=True)
        rank = env.global_rank
        output = task.executed if rank == 0 else str(folder / f"run.rank{rank}.ipynb")
        started = time.time()
        try:
            execute_notebook(task, output)
        except Exception:
            if rank and _touched_since(Path(task.stop), started):
                # preemption: rank 0 checkpoints and requeues the job, and the requeue ends this task. Until then
                # no exit: an error exit would make srun --kill-on-bad-exit end rank 0 before it requeued, and any
                # exit leaves a result file that submitit would take for the requeued attempt's
                time.sleep(REQUEUE_WAIT_S)
            raise
        return {"run_id": task.run_id, "status": run_status(task.record), "rank": rank}

    def checkpoint(self, task: NotebookTask) -> submitit.helpers.DelayedSubmission:
        checkpoint, record = Path(task.checkpoint), Path(task.record)
        before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
        Path(task.stop).touch()
        deadline = time.monotonic() + CHECKPOINT_WAIT_S
        while time.monotonic() < deadline and not record.exists():
            if checkpoint.exists() and checkpoint.stat().st_mtime_ns != before:
                break
            time.sleep(0.5)
        print(f"{task.run_id}: checkpoint requested (pid {os.getpid()}); requeueing", flush=True)
        return super().checkpoint(task)
