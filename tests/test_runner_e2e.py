"""The ablation runner end to end: real training in papermill-executed notebooks through submitit, on the
local executor and on a real SLURM cluster (``slurm/local-up.sh``; the slurm tests skip without one)."""
import dataclasses
import json
import time
from pathlib import Path

import pytest

from ablations.clusters import get_slurm_profile, make_executor, slurm_partitions
from ablations.job import NotebookJob
from ablations.run import main
from ablations.runner import notebook_task
from ablations.spec import load_spec
from repnext.reference import paper_value
from repnext.store import read_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm():
    if slurm_partitions() is None:
        pytest.skip("no SLURM cluster reachable (bash slurm/local-up.sh starts one)")
    return get_slurm_profile("local")


def _table(results, tables, *extra):
    return main(["--table", "downsample", "--profile", "smoke", "--results", str(results), "--tables-dir",
                 str(tables), "--no-progress", *extra])


def _submissions(results):
    folder = results / ".submitit"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.mark.slurm
def test_downsample_table_on_slurm_then_cached(slurm, tmp_path):
    results, tables = tmp_path / "results", tmp_path / "tables"
    assert _table(results, tables, "--cluster", "slurm") == 0
    md = (tables / "downsample.md").read_text()
    records = [read_json(p) for p in sorted(results.glob("downsample/*/record.json"))]
    assert len(records) == 3 and {r["status"] for r in records} == {"complete"}
    assert all((p.parent / "run.ipynb").is_file() for p in results.glob("downsample/*/record.json"))
    for r in records:  # exact architecture numbers at the paper's precision
        for metric, value in (("params_m", r["paper_setting"]["fused_params"] / 1e6),
                              ("gmacs", r["paper_setting"]["macs"] / 1e9)):
            assert paper_value("downsample", r["model"], metric).matches(value)
        assert r["best"]["acc1"] > 20  # 10 digit classes; one smoke epoch (120 at 1/100) learns: 26-58 % here
    assert "| 5.22 " in md and "| 5.25 " in md and "| 0.78 " in md and "| 0.79 " in md
    tex = (tables / "downsample.tex").read_text()
    submitted = _submissions(results)

    assert _table(results, tables, "--cluster", "slurm") == 0  # again: nothing submitted, same table
    assert _submissions(results) == submitted
    assert (tables / "downsample.md").read_text() == md and (tables / "downsample.tex").read_text() == tex


def _small_run(tmp_path, name, epochs=2):
    """One cheap run of the downsample notebook (RepNeXt-M0, 2 epochs) as a job task."""
    spec = load_spec("downsample")
    run = spec.expand("smoke")[0]
    run = dataclasses.replace(run, config=dataclasses.replace(run.config, model="repnext_m0", epochs=epochs),
                              parameters=dict(run.parameters, throughput_batch=None))
    return spec, run, notebook_task(spec, run, tmp_path / name)


def _history(folder):
    return [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]


@pytest.mark.slurm
def test_preempted_job_requeues_resumes_and_matches_an_uninterrupted_run(slurm, tmp_path):
    _, run, task = _small_run(tmp_path, "interrupted")
    _, _, reference_task = _small_run(tmp_path, "reference")
    executor = make_executor("slurm", tmp_path / "jobs", slurm)
    job = executor.submit(NotebookJob(), task)
    reference = executor.submit(NotebookJob(), reference_task)
    folder = run.folder(tmp_path / "interrupted")
    deadline = time.monotonic() + 300
    while not (folder / "log.txt").exists():  # interrupt in the middle of epoch 2
        assert time.monotonic() < deadline and not job.done(), job.stderr()
        time.sleep(1)
    time.sleep(3)
    job._interrupt()  # scancel --signal USR2, as on preemption
    assert job.result()["status"] == "complete" and reference.result()["status"] == "complete"
    log = job.stdout() + (job.stderr() or "")
    assert "Requeued" in log or "requeue" in log.lower()
    record, expected = read_json(folder / "record.json"), read_json(Path(reference_task.folder) / "record.json")
    assert record["best"] == expected["best"] and record["final"] == expected["final"]
    history, expected_history = _history(folder), _history(run.folder(tmp_path / "reference"))
    assert [h["epoch"] for h in history] == [0, 1]  # nothing lost, nothing twice
    for got, want in zip(history, expected_history):
        assert got["test_acc1"] == want["test_acc1"] and got["train_loss"] == pytest.approx(want["train_loss"],
                                                                                             rel=1e-5)


@pytest.mark.slurm
def test_two_tasks_per_node_train_one_run_through_ddp(slurm, tmp_path):
    _, run, task = _small_run(tmp_path, "ddp", epochs=1)
    executor = make_executor("slurm", tmp_path / "jobs", slurm.replace(tasks_per_node=2), tasks_per_node=2)
    job = executor.submit(NotebookJob(), task)
    outcomes = job.results()
    assert sorted(o["rank"] for o in outcomes) == [0, 1] and {o["status"] for o in outcomes} == {"complete"}
    folder = run.folder(tmp_path / "ddp")
    assert len(list(folder.glob("record.json"))) == 1 and len(_history(folder)) == 1
    assert read_json(folder / "record.json")["environment"]["world_size"] == 2
    assert (folder / "run.ipynb").is_file() and (folder / "run.rank1.ipynb").is_file()


@pytest.mark.slurm
def test_unknown_partition_is_named_with_the_clusters_and_nothing_is_submitted(slurm, tmp_path, capsys):
    assert _table(tmp_path / "results", tmp_path / "tables", "--cluster", "slurm", "--partition", "nope") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown partition 'nope'; this cluster has: debug" in err
    assert not _submissions(tmp_path / "results") and not (tmp_path / "tables").exists()
