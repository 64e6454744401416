"""One run over several nodes: the SLURM parameters that make it work on a GPU cluster, and end to end on the
two-node cluster of ``slurm/local-up.sh --nodes 2`` (node1 and node2, each slurmd in its own network namespace,
partition ``multi``; those tests skip without it)."""
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from ablations.clusters import ClusterError, get_slurm_profile, make_executor, slurm_parameters
from ablations.job import NotebookJob
from ablations.run import main
from ablations.runner import dead_rank, execute
from repnext.store import read_json
from tests.test_runner_e2e import _history, _small_run


def _run(*argv):
    return main(["--no-progress", *argv])


# --- without a cluster -----------------------------------------------------------------------------------

def test_srun_restates_cpus_per_task_and_ends_the_job_when_a_rank_dies():
    params = slurm_parameters(get_slurm_profile("gpu"))
    assert params["slurm_srun_args"] == ["--cpus-per-task=10", "--kill-on-bad-exit=1"]
    assert params["slurm_mem_per_cpu"] == "4096M" and "mem_gb" not in params  # 40 GB per rank, not the default
    assert get_slurm_profile("gpu").mem_per_task_gb() == 40


def test_gpu_profile_refuses_a_rank_count_other_than_the_gpu_count(capsys):
    assert _run("--table", "imagenet", "--cluster", "slurm", "--profile", "full", "--tasks-per-node", "4",
                "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ablations/run.py: error: SLURM profile 'gpu': tasks_per_node=4 but gpus_per_node=8; "
                   "one DDP process per GPU: make them equal")
    with pytest.raises(ClusterError, match="mem_gb=100 and mem_per_cpu_gb=4 are exclusive"):
        get_slurm_profile("gpu").replace(mem_gb=100).check()


@pytest.mark.parametrize("argv, error", [
    (["--cluster", "local", "--nodes", "2"], "--nodes 2 needs --cluster slurm (the local cluster is this machine)"),
    (["--cluster", "slurm", "--nodes", "0"], "--nodes must be at least 1, got 0"),
])
def test_bad_node_counts_are_refused_in_one_line(argv, error, capsys):
    assert _run("--table", "downsample", *argv, "--dry-run") == 2
    assert capsys.readouterr().err.strip() == f"ablations/run.py: error: {error}"


def test_dry_run_of_the_full_profile_on_two_nodes_shows_what_each_gpu_gets(capsys):
    assert _run("--table", "imagenet", "--cluster", "slurm", "--profile", "full", "--nodes", "2",
                "--dry-run") == 0
    out = capsys.readouterr().out
    runs = re.findall(r" batch=(\d+) .* per_gpu=(\d+)\n", out)
    assert len(runs) == 12 and set(runs) == {("2048", "128"), ("1024", "64")}  # over 16 GPUs
    assert "ranks: 2 node(s) x 8 task(s) = 16; per rank: 1 GPU, 10 CPUs, 40 GB memory" in out
    assert "nodes=2 " in out and "'--kill-on-bad-exit=1'" in out


def test_dead_rank_is_read_from_srun_in_the_last_attempt_only(tmp_path):
    log = tmp_path / "5_0_log.err"
    log.write_text("submitit INFO - Starting with JobEnvironment(job_id=5)\n"
                   "srun: error: node1: task 0: Killed\n"  # an earlier attempt
                   "submitit INFO - Starting with JobEnvironment(job_id=5)\n"
                   "srun: error: node2: task 1: Exited with exit code 1\n"  # its own error is in its result
                   "srun: error: node2: task 3: Segmentation fault\n"
                   "srun: error: node1: task 0: Killed\n")
    assert dead_rank(log) == "rank 3 on node2: Segmentation fault"
    log.write_text("srun: error: node2: task 1: Exited with exit code 1\n")
    assert dead_rank(log) is None and dead_rank(tmp_path / "missing") is None


# --- on the two-node cluster -----------------------------------------------------------------------------

def _records(results):
    return [read_json(p) for p in sorted(results.glob("downsample/*/record.json"))]


@pytest.mark.slow
@pytest.mark.slurm
def test_downsample_table_over_two_nodes(two_node_slurm, tmp_path):
    results, tables = tmp_path / "results", tmp_path / "tables"
    assert _run("--table", "downsample", "--cluster", "slurm", "--profile", "smoke", "--nodes", "2",
                "--tasks-per-node", "1", "--results", str(results), "--tables-dir", str(tables)) == 0
    records = _records(results)
    assert len(records) == 3 and {r["status"] for r in records} == {"complete"}
    for r in records:  # one record per run, written once for its two ranks, one on each node
        assert r["environment"]["world_size"] == 2 and r["environment"]["hosts"] == ["node1", "node2"]
        assert r["best"]["acc1"] > 20
    assert "| 5.22 " in (tables / "downsample.md").read_text()
    # (the sbatch script's --nodes and srun arguments: test_srun_restates_cpus_per_task...; the runner prunes
    # .submitit/ after a run without failures)


@pytest.mark.slow
@pytest.mark.slurm
def test_two_node_job_preempted_mid_epoch_resumes_to_the_same_metrics(two_node_slurm, tmp_path):
    # 3 epochs: the interruption lands inside epoch 2 or 3 even when an epoch takes only seconds
    _, run, task = _small_run(tmp_path, "interrupted", epochs=3)
    _, _, reference_task = _small_run(tmp_path, "reference", epochs=3)
    executor = make_executor("slurm", tmp_path / "jobs", two_node_slurm)
    job = executor.submit(NotebookJob(), task)
    reference = executor.submit(NotebookJob(), reference_task)
    folder = run.folder(tmp_path / "interrupted")
    deadline = time.monotonic() + 300
    while not (folder / "log.txt").exists():  # interrupt after the first epoch
        assert time.monotonic() < deadline and not job.done(), job.stderr()
        time.sleep(1)
    time.sleep(2)
    job._interrupt()  # scancel --signal USR2, as on preemption
    assert [o["status"] for o in job.results()] == ["complete"] * 2
    assert [o["status"] for o in reference.results()] == ["complete"] * 2
    assert "Requeued" in job.stdout() + (job.stderr() or "")
    record, expected = read_json(folder / "record.json"), read_json(Path(reference_task.folder) / "record.json")
    assert record["environment"]["hosts"] == ["node1", "node2"]
    history, expected_history = _history(folder), _history(run.folder(tmp_path / "reference"))
    assert [h["epoch"] for h in history] == [0, 1, 2]  # nothing lost, nothing twice
    assert record["best"] == expected["best"] and record["final"] == expected["final"]
    for got, want in zip(history, expected_history):
        assert got["test_acc1"] == want["test_acc1"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)


def _training_process(folder: Path, rank: int) -> tuple[int, int] | None:
    """(pid, parent pid) of the notebook kernel training ``folder`` as ``rank``, wherever its node runs it."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or Path(proc, "cwd").resolve() != folder.resolve():
                continue
            environ = Path(proc, "environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ and b"ipykernel" in Path(proc, "cmdline").read_bytes():
                return int(proc.name), int(Path(proc, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    return None


@pytest.mark.slow
@pytest.mark.slurm
def test_rank_killed_on_one_node_fails_the_run_naming_it_within_a_minute(two_node_slurm, tmp_path):
    spec, run, _ = _small_run(tmp_path, "killed", epochs=3)
    results = tmp_path / "killed"
    outcomes = []
    runner = threading.Thread(target=lambda: outcomes.extend(
        execute(spec, [run], results, "slurm", 1, two_node_slurm, progress=False)))
    runner.start()
    folder, deadline = run.folder(results), time.monotonic() + 300
    while not (folder / "config.json").exists() or (found := _training_process(folder, 1)) is None:
        assert time.monotonic() < deadline and runner.is_alive(), "the job did not start training"
        time.sleep(1)
    time.sleep(3)  # inside the training loop on both nodes
    kernel, task = found
    for pid in (task, kernel):  # the whole rank: its submitit task (srun's) and the kernel training in it
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    runner.join(timeout=120)
    ended = time.monotonic() - killed
    print(f"the job ended {ended:.1f} s after rank 1 was killed")  # reported by -rP
    assert not runner.is_alive() and ended < 60, f"the job hung for {ended:.0f} s after rank 1 was killed"
    assert [o.status for o in outcomes] == ["failed"]
    record = read_json(folder / "record.json")
    assert record["status"] == "failed" and record["error"].startswith("rank 1 on node2: Killed"), record
    assert "rank 1 on node2: Killed" in outcomes[0].error

