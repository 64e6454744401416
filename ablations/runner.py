"""Submit a table's missing runs, follow them to the end, and say what happened to each.

Runs whose record is complete are skipped, so re-running a table only retries what is missing or failed.
SLURM gets one job array (``--max-parallel`` caps how many run at once); ``local`` and ``debug`` are fed
job by job, never more than ``--max-parallel`` at a time.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import submitit
from tqdm import tqdm

from repnext.errors import StoreError
from repnext.store import RunPaths, read_json, write_record

from .clusters import SlurmProfile, make_executor
from .job import NotebookJob, NotebookTask
from .pool import NotebookWorker, TaskQueue
from .render import complete_record
from .spec import Run, TableSpec

POLL_S = 1.0
ERROR_LINES = 6
# what srun says of the first task of a step killed by a signal (with --kill-on-bad-exit, the others follow);
# a task that exited with a code ran Python to the end and left its own error
SRUN_TASK_ERROR = re.compile(r"^srun: error: (\S+): tasks? ([\d,-]+): (?!Exited)(.+)$", re.MULTILINE)
ATTEMPT_START = "Starting with JobEnvironment"  # submitit's first line in each (re)queued attempt's log
SUBMITIT_LOGS_NOTE = "You can check full logs"  # what submitit appends to a job's error (reported apart)
STOP_WAIT_S = 120.0  # how long stopped jobs get to start (a kernel), checkpoint and end before they are killed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # STOP_SIGNALS that arrived while ``execute`` ran


class RunnerInterrupted(Exception):
    """SIGINT/SIGTERM arrived: the runner stopped its jobs (each checkpointed) and ends; a re-run resumes."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


@dataclass
class Outcome:
    run: Run
    status: str                 # complete | failed
    error: str = ""
    notebook: Path | None = None
    log: Path | None = None


def pending_runs(runs: list[Run], results: Path) -> list[Run]:
    return [run for run in runs if complete_record(run, results) is None]


def notebook_task(spec: TableSpec, run: Run, results: Path) -> NotebookTask:
    folder = run.folder(results)
    parameters = {"config": dataclasses.asdict(run.config), "output": str(folder), "paper": run.paper,
                  **run.parameters}
    paths = RunPaths(folder)
    return NotebookTask(run.run_id, str(spec.notebook_path), str(folder), parameters, executed=str(paths.notebook),
                        record=str(paths.record), checkpoint=str(paths.checkpoint), stop=str(paths.stop))


def job_tasks(spec: TableSpec, runs: list[Run], results: Path) -> list[tuple[list[Run], NotebookTask]]:
    """The jobs to submit and the runs each one completes: a job per run, or for an exclusive spec a single
    job for all its runs (the models it compares are timed side by side, not each beside another job)."""
    if not spec.exclusive:
        return [([run], notebook_task(spec, run, results)) for run in runs]
    task = notebook_task(spec, runs[0], results)
    together = [{"config": dataclasses.asdict(run.config), "output": str(run.folder(results))} for run in runs]
    return [(runs, dataclasses.replace(task, parameters={**task.parameters, "side_by_side": together}))]


def submission_folder(results: Path, table: str) -> Path:
    """A fresh folder per invocation: submitit trusts any result file it finds, and job ids repeat."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return results / ".submitit" / f"{table}-{stamp}-{os.getpid()}"


def _epochs_done(run: Run, results: Path) -> int:
    log = RunPaths(run.folder(results)).log
    try:
        return sum(1 for line in log.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def dead_rank(log: Path | None) -> str | None:
    """The rank SLURM saw killed first in the job's last attempt, e.g. 'rank 1 on node2: Killed', from srun's
    lines in the job's log; None when srun reported no killed task (or there is no log)."""
    try:
        text = log.read_text(errors="replace") if log is not None else ""
    except OSError:
        return None
    match = SRUN_TASK_ERROR.search(text, max(text.rfind(ATTEMPT_START), 0))
    if match is None:
        return None
    host, tasks, what = match.groups()
    return f"rank {tasks} on {host}: {what}"


def _outcome(run: Run, results: Path, job_error: Callable[[], str | None], log: Path | None) -> Outcome:
    """What became of ``run``: its record says, else SLURM's word on a killed rank (from the job's ``log``),
    else ``job_error()``, what the job itself raised."""
    folder = run.folder(results)
    paths = RunPaths(folder)
    try:
        record = read_json(paths.record)
    except StoreError as e:
        record = {"error": str(e)}
    if record is not None and record.get("status") == "complete":
        return Outcome(run, "complete", notebook=paths.notebook)
    rank = dead_rank(log)
    if rank is not None:  # a rank died without a word (killed, OOM): SLURM names it, the record keeps it first
        survivors = (record or {}).get("error")  # e.g. what rank 0 saw: a lost peer
        died = f"{rank} (SLURM ended the job's other ranks)" + (f"; {survivors}" if survivors else "")
        record = {**(record or {"run_id": run.run_id}), "status": "failed", "error": died}
        folder.mkdir(parents=True, exist_ok=True)
        write_record(paths.record, record)
    if record is not None and record.get("error"):
        error = record["error"]
    else:
        error = job_error() or "the job ended without writing a record"
    # submitit appends where its logs are (reported below): keep the error itself
    lines = [line for line in error.split(SUBMITIT_LOGS_NOTE)[0].splitlines() if line.strip(" -\n")]
    tail = "\n".join(lines[-ERROR_LINES:])
    return Outcome(run, "failed", tail, paths.notebook if paths.notebook.exists() else None, log)


def _job_outcome(run: Run, job: submitit.Job, results: Path) -> Outcome:
    def job_error() -> str | None:
        exc = job.exception()
        return str(exc) if exc is not None else None

    return _outcome(run, results, job_error, getattr(job.paths, "stderr", None))


def _note_signal(signum: int, frame) -> None:
    if _received:  # a second one: stop waiting for the jobs now (the debug cluster runs them in this process)
        raise KeyboardInterrupt
    _received.append(signum)


def stops_jobs_on_signals(fn):
    """While ``fn`` runs, SIGINT/SIGTERM are noted (in ``_received``) for its loop to stop the jobs, not raised."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        _received.clear()
        handlers = {sig: signal.signal(sig, _note_signal) for sig in STOP_SIGNALS}
        try:
            return fn(*args, **kwargs)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    return wrapper


def _submit(executor: submitit.Executor, function: NotebookJob | NotebookWorker, task: NotebookTask | TaskQueue
            ) -> submitit.Job:
    """Submit with SIGINT ignored: the local controller and job inherit that, so Ctrl-C to the terminal's process
    group reaches the runner alone, which stops the jobs in order (a checkpoint, a complete run.ipynb)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return executor.submit(function, task)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return executor.submit(function, task)
    finally:
        signal.signal(signal.SIGINT, previous)


def end_jobs(jobs: list[submitit.Job], while_waiting: Callable[[], None] = lambda: None) -> int:
    """Wait up to ``STOP_WAIT_S`` for ``jobs`` to end (calling ``while_waiting`` every poll), then kill the rest;
    how many were killed."""
    deadline = time.monotonic() + STOP_WAIT_S
    live = [job for job in jobs if not job.done()]
    while live and time.monotonic() < deadline:
        while_waiting()
        time.sleep(POLL_S)
        live = [job for job in live if not job.done()]
    for job in live:
        job.cancel(check=False)
    return len(live)


def stop_jobs(tasks: list[NotebookTask], jobs: list[submitit.Job], signum: int) -> RunnerInterrupted:
    """Ask the training of every task still running for a checkpoint through its stop file (touched until the
    jobs end, so a training that starts later sees it too), wait for the jobs to end, kill what is left after
    ``STOP_WAIT_S``."""
    def ask() -> None:
        for task in tasks:
            try:
                Path(task.stop).touch()
            except OSError:  # the job has not created its run folder yet
                pass

    n = sum(not job.done() for job in jobs)
    killed = end_jobs(jobs, ask)
    note = f", {killed} killed after {STOP_WAIT_S:.0f} s" if killed else ""
    return RunnerInterrupted(signum, f"interrupted by {signal.Signals(signum).name}: stopped {n} running job(s), "
                                     f"each checkpointed{note}; run the same command again to resume")


def prune_submission(folder: Path, outcomes: list[Outcome]) -> None:
    """Remove this invocation's submitit folder (pickles, job logs) unless a failed run's report points into it."""
    if all(o.status == "complete" for o in outcomes):
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # .submitit itself, when no other invocation's folder is left
        except OSError:
            pass


@stops_jobs_on_signals
def execute(spec: TableSpec, runs: list[Run], results: Path, cluster: str, max_parallel: int,
            slurm: SlurmProfile | None = None, tasks_per_node: int = 1, progress: bool = True) -> list[Outcome]:
    """Submit ``runs`` and wait for all of them; the outcome of each, in the order of ``runs``."""
    folder = submission_folder(results, spec.name)
    executor = make_executor(cluster, folder, slurm, max_parallel, tasks_per_node, name=f"repnext-{spec.name}")
    function = NotebookJob()
    queue = job_tasks(spec, runs, results)
    jobs: dict[str, tuple[Run, submitit.Job]] = {}
    started: list[tuple[NotebookTask, submitit.Job]] = []  # what to stop on SIGINT/SIGTERM
    if cluster == "slurm":
        with executor.batch():
            submitted = [(group, task, _submit(executor, function, task)) for group, task in queue]
        jobs = {run.run_id: (run, job) for group, _, job in submitted for run in group}
        started = [(task, job) for _, task, job in submitted]
        queue = []
    outcomes: dict[str, Outcome] = {}
    total_epochs = sum(run.config.resolve().recipe.epochs for run in runs)
    bar = tqdm(total=total_epochs, desc=f"{spec.name} ({cluster})", unit="epoch", disable=not progress,
               mininterval=POLL_S if sys.stderr.isatty() else 30)  # a log file gets a line per 30 s
    while len(outcomes) < len(runs):
        if _received:
            bar.close()
            live = [(task, job) for task, job in started if not job.done()]
            interrupted = stop_jobs([task for task, _ in live], [job for _, job in live], _received[0])
            prune_submission(folder, [])  # nothing failed: the run folders hold the checkpoints and notebooks
            raise interrupted
        while queue and len(jobs) - len(outcomes) < max_parallel:
            group, task = queue.pop(0)
            job = _submit(executor, function, task)
            jobs.update({run.run_id: (run, job) for run in group})
            started.append((task, job))
        running = 0
        for run_id, (run, job) in jobs.items():
            if run_id in outcomes:
                continue
            if job.done():
                outcomes[run_id] = _job_outcome(run, job, results)
                if outcomes[run_id].status == "failed":
                    tqdm.write(f"FAILED {run_id}: {outcomes[run_id].error.splitlines()[-1]}")
            elif job.state in ("RUNNING", "COMPLETING"):
                running += 1
        failed = sum(o.status == "failed" for o in outcomes.values())
        bar.set_postfix_str(f"pending {len(runs) - len(outcomes) - running}, running {running}, "
                            f"done {len(outcomes) - failed}, failed {failed}", refresh=False)
        bar.update(sum(_epochs_done(run, results) for run in runs) - bar.n)  # redraws at most every mininterval
        if len(outcomes) < len(runs):
            time.sleep(POLL_S)
    bar.close()
    prune_submission(folder, list(outcomes.values()))
    return [outcomes[run.run_id] for run in runs]


def failure_report(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        if o.status != "failed":
            continue
        lines.append(f"run {o.run.run_id} ({o.run.config.model}) failed:")
        lines.extend(f"    {line}" for line in o.error.splitlines())
        if o.notebook:
            lines.append(f"    executed notebook: {o.notebook}")
        if o.log:
            lines.append(f"    job log: {o.log}")
    return "\n".join(lines)


@dataclass
class PoolItem:
    """A queued job of ``execute_pooled``: the runs one notebook execution completes."""
    key: str
    table: str
    runs: list[Run]
    task: NotebookTask


def pool_items(plans: list[tuple[TableSpec, list[Run]]], results: Path) -> tuple[list[PoolItem], list[PoolItem]]:
    """The exclusive tables' jobs (each runs alone, first) and the others', in the order they are claimed: tables
    with fewer jobs first, since theirs are the long ones (dense, gradcam) and the many short runs of the large
    tables then fill both workers to the end."""
    alone, shared = [], []
    for spec, runs in plans:
        items = [PoolItem("", spec.name, group, task) for group, task in job_tasks(spec, runs, results)]
        (alone if spec.exclusive else shared).append(items)
    shared.sort(key=len)
    ordered = [item for items in alone + shared for item in items]
    for i, item in enumerate(ordered):
        item.key = f"{i:04d}-{item.table}"
    n_alone = sum(map(len, alone))
    return ordered[:n_alone], ordered[n_alone:]


def _key(run: Run) -> str:
    return f"{run.table}/{run.run_id}"  # tables may hold runs of the same config, each in its own folder


def _pool_outcomes(items: list[PoolItem], queue: TaskQueue, results: Path, workers: list[submitit.Job],
                   outcomes: dict[str, Outcome]) -> None:
    """Note the outcome of every item the workers finished; when no worker is left, of every other one too."""
    ended = all(job.done() for job in workers)
    for item in items:
        if _key(item.runs[0]) in outcomes:
            continue
        result = queue.result(item.key)
        if result is None and not ended:
            continue

        def error(result=result) -> str:
            if result is not None:
                return result.get("error", "")
            failures = [str(job.exception()) for job in workers if job.exception() is not None]
            return failures[0] if failures else "the workers ended before running it"

        for run in item.runs:
            outcome = outcomes[_key(run)] = _outcome(run, results, error, None)
            if outcome.status == "failed":
                tqdm.write(f"FAILED {run.table}/{run.run_id}: {outcome.error.splitlines()[-1]}")


@stops_jobs_on_signals
def execute_pooled(plans: list[tuple[TableSpec, list[Run]]], results: Path, n_workers: int,
                   progress: bool = True) -> dict[str, tuple[list[Outcome], str]]:
    """Every table's runs on ``n_workers`` local notebook workers (``ablations.pool``): the exclusive tables'
    jobs first, each alone, then all the others. Per table: the outcomes in the order of its runs, and how long
    its jobs took."""
    begun = time.time()
    folder = submission_folder(results, "pool")
    queue = TaskQueue(folder / "queue")
    alone, shared = pool_items(plans, results)
    stages = [[item] for item in alone] + [shared]  # each stage is queued once the one before it is done
    executor = make_executor("local", folder, name="repnext-pool")
    workers = [_submit(executor, NotebookWorker(), queue) for _ in range(min(n_workers, len(alone + shared)))]
    runs = [run for _, table_runs in plans for run in table_runs]
    outcomes: dict[str, Outcome] = {}
    bar = tqdm(total=sum(run.config.resolve().recipe.epochs for run in runs), desc="tables (local)", unit="epoch",
               disable=not progress, mininterval=POLL_S if sys.stderr.isatty() else 30)
    current: list[PoolItem] = []
    while len(outcomes) < len(runs):
        if _received:
            bar.close()
            queue.stop()
            running = [item.task for item in alone + shared if queue.claimed(item.key) and not queue.result(item.key)]
            interrupted = stop_jobs(running, workers, _received[0])
            prune_submission(folder, [])
            raise interrupted
        if stages and all(queue.result(item.key) is not None for item in current):
            current = stages.pop(0)
            for item in current:
                queue.put(item.key, item.task)
            if not stages:
                queue.close()
        _pool_outcomes(alone + shared, queue, results, workers, outcomes)
        bar.update(sum(_epochs_done(run, results) for run in runs) - bar.n)
        if len(outcomes) < len(runs):
            time.sleep(POLL_S)
    bar.close()
    end_jobs(workers)  # the queue is closed and empty: they end by themselves, before their folder is removed
    took = {spec.name: _table_time([queue.result(i.key) for i in alone + shared if i.table == spec.name], begun)
            for spec, _ in plans}
    prune_submission(folder, list(outcomes.values()))
    return {spec.name: ([outcomes[_key(run)] for run in table_runs], took[spec.name]) for spec, table_runs in plans}


def _table_time(results: list[dict | None], begun: float) -> str:
    """How long a table's jobs took in the pool, where tables overlap: worker time, and when the last ended."""
    spans = [(r["started"], r["ended"]) for r in results if r is not None and "started" in r]
    if not spans:
        return "with no job finished"
    busy = sum(end - start for start, end in spans)
    return f"in {busy:.0f} s of worker time, the last done {max(end for _, end in spans) - begun:.0f} s into the pool"
