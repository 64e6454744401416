"""The local executor's notebook workers: a file queue, one kernel per worker, a clean namespace per run."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from ablations.job import NotebookTask
from ablations.pool import NotebookWorker, TaskQueue
from ablations.runner import pool_items
from ablations.spec import load_spec
from repnext.config import RunConfig
from repnext.experiment import run_cell

HOLD_S = 6.0
PROBE = """import json, os
leaked = "seen" in globals()
with open("probe.json", "w") as f:
    json.dump({"cwd": os.getcwd(), "pid": os.getpid(), "leaked": leaked, "value": value}, f)
seen = True
if value == "exit":
    os._exit(3)
if value == "raise":
    raise RuntimeError("the cell failed")
"""


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                            "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("value = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(PROBE)]
    nbformat.write(nb, path)
    return path


def _task(tmp_path: Path, name: str, value: str) -> NotebookTask:
    folder = tmp_path / "runs" / name
    return NotebookTask(name, str(_notebook(tmp_path / "probe.ipynb")), str(folder), {"value": value},
                        executed=str(folder / "run.ipynb"), record=str(folder / "record.json"),
                        checkpoint=str(folder / "checkpoint.pth"), stop=str(folder / "stop.request"))


def _probe(task: NotebookTask) -> dict:
    return json.loads((Path(task.folder) / "probe.json").read_text())


def test_every_task_is_claimed_exactly_once_by_racing_workers(tmp_path):
    queue = TaskQueue(tmp_path / "queue")
    tasks = {f"{i:04d}": _task(tmp_path, f"run{i}", str(i)) for i in range(40)}
    for key, task in tasks.items():
        queue.put(key, task)
    claims: list[str] = []

    def drain():
        while (item := queue.claim()) is not None:
            claims.append(item[0])

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claims) == sorted(tasks) and queue.claim() is None
    assert all(queue.claimed(key) for key in tasks)


def test_one_kernel_runs_every_notebook_in_its_own_folder_and_a_clean_namespace(tmp_path):
    queue = TaskQueue(tmp_path / "queue")
    tasks = [_task(tmp_path, name, name) for name in ("a", "b", "c")]
    for i, task in enumerate(tasks):
        queue.put(f"{i:04d}", task)
    queue.close()
    results = NotebookWorker()(queue)
    assert [r["run_id"] for r in results] == ["a", "b", "c"] and not any("error" in r for r in results)
    probes = [_probe(task) for task in tasks]
    assert [p["cwd"] for p in probes] == [task.folder for task in tasks]
    assert [p["value"] for p in probes] == ["a", "b", "c"]
    assert not any(p["leaked"] for p in probes)  # the names a notebook left are gone for the next one
    assert len({p["pid"] for p in probes}) == 1  # one kernel: the imports are paid once
    assert all(Path(task.executed).is_file() for task in tasks)
    assert all(queue.result(f"{i:04d}")["ended"] >= queue.result(f"{i:04d}")["started"] for i in range(3))


def test_a_failed_or_dead_kernel_fails_its_run_only(tmp_path):
    queue = TaskQueue(tmp_path / "queue")
    tasks = [_task(tmp_path, "raises", "raise"), _task(tmp_path, "exits", "exit"), _task(tmp_path, "ok", "ok")]
    for i, task in enumerate(tasks):
        queue.put(f"{i:04d}", task)
    queue.close()
    results = {r["run_id"]: r for r in NotebookWorker()(queue)}
    assert "RuntimeError" in results["raises"]["error"] and "the cell failed" in results["raises"]["error"]
    assert results["exits"]["error"] and "error" not in results["ok"]
    # the kernel that exited was replaced for the next run
    assert _probe(tasks[2])["pid"] != _probe(tasks[1])["pid"] == _probe(tasks[0])["pid"]
    assert Path(tasks[0].executed).is_file()  # the failed run's notebook holds its traceback


def test_a_stopped_queue_is_not_claimed_from(tmp_path):
    queue = TaskQueue(tmp_path / "queue")
    queue.put("0000", _task(tmp_path, "a", "a"))
    queue.stop()
    assert NotebookWorker()(queue) == [] and not queue.claimed("0000")


def test_exclusive_tables_run_alone_first_and_small_tables_lead_the_shared_queue(tmp_path):
    specs = {name: load_spec(name) for name in ("imagenet", "latency", "gradcam", "srp")}
    plans = [(spec, spec.expand("smoke")) for spec in specs.values()]
    alone, shared = pool_items(plans, tmp_path)
    assert [item.table for item in alone] == ["latency"] and len(alone[0].runs) == len(plans[1][1])
    assert [item.table for item in shared] == ["gradcam"] + ["srp"] * 2 + ["imagenet"] * 12
    keys = [item.key for item in alone + shared]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


@pytest.mark.slow
def test_a_cell_whose_run_another_worker_trains_waits_and_takes_its_record(tmp_path):
    """Two tables' cells may train one run at once (a dense table trains the imagenet table's backbone run):
    the second waits for the first's lock instead of failing, then finds the run complete. ~15 s."""
    config = RunConfig("repnext_m0", profile="smoke", data="digits", epochs=1)
    folder = tmp_path / "imagenet" / config.run_id
    folder.mkdir(parents=True)
    # another worker's training of the same run: a process holding the run's lock for HOLD_S
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from repnext.lock import RunLock; lock = RunLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(float(sys.argv[2]))", str(folder), str(HOLD_S)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    record = run_cell(config, folder, throughput_batch=None)
    assert time.monotonic() - start > HOLD_S / 2 and holder.wait(timeout=60) == 0  # it waited for the holder
    assert record["status"] == "complete" and record["run_id"] == config.run_id
