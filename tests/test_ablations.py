"""The ablation runner without training: specs, validation, dry runs, rendering, concurrent writes."""
import json
import subprocess
import sys
import threading

import pytest
import submitit

from ablations import REPO
from ablations.clusters import local_parameters, make_executor
from ablations.render import render_table, table_frame, tex_escape
from ablations.run import main
from ablations.spec import SpecError, available_tables, load_spec
from repnext.store import read_json, write_json

from .records import real_record


@pytest.fixture(scope="module")
def downsample():
    return load_spec("downsample")


def test_downsample_spec_expands_to_the_papers_runs(downsample):
    full = downsample.expand("full")
    assert [r.config.model for r in full] == ["convnext_femto", "convnext_femto_ds_a", "convnext_femto_ds_b"]
    settings = [r.config.resolve() for r in full]
    assert {(s.data, s.recipe.epochs, s.batch_size, s.lr, s.img_size) for s in settings} == {
        ("imagenet", 120, 2048, 4e-3, 224)}
    smoke = downsample.expand("smoke")
    assert {(r.config.data, r.config.epochs) for r in smoke} == {("digits", 1)}  # 120 epochs at 1/100
    assert len({r.run_id for r in full + smoke}) == 6  # the profile is part of a run's identity
    assert [r.config.model for r in downsample.expand("smoke", only="*_ds_?")] == [
        "convnext_femto_ds_a", "convnext_femto_ds_b"]


def test_specs_name_existing_models_and_reference_rows():
    """Every model exists, and every column the paper reports has its value for at least one row."""
    import timm

    from repnext.reference import paper_values
    for name in available_tables():
        spec = load_spec(name)
        runs = spec.expand("full")
        assert all(timm.is_model(run.config.model) for run in runs)
        for column in spec.columns:
            if not column.reference:
                continue
            found = [v for run in runs for v in paper_values(
                column.reference_table or spec.reference,
                (column.reference_model or "{model}").format(model=run.config.model), column.reference)]
            assert found, f"{name}: no paper value for column {column}"


@pytest.mark.parametrize("argv, message", [
    (["--table", "nope"], "unknown table 'nope'; expected one of: compact, detection, downsample"),
    (["--table", "downsample", "--cluster", "kubernetes"], "unknown cluster 'kubernetes'"),
    (["--table", "downsample", "--profile", "huge"], "unknown profile 'huge'"),
    (["--table", "downsample", "--data-root", "/does/not/exist"], "data root /does/not/exist does not exist"),
    (["--table", "downsample", "--profile", "full"], "pass --data-root"),
    (["--table", "downsample", "--max-parallel", "0"], "--max-parallel must be at least 1"),
    (["--table", "downsample", "--cluster", "slurm", "--slurm-profile", "nope"], "unknown SLURM profile 'nope'"),
])
def test_bad_input_is_one_line_and_submits_nothing(argv, message, tmp_path, capsys):
    assert main([*argv, "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results" / ".submitit").exists()


def test_unwritable_results_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--table", "downsample", "--results", str(blocker / "results")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_dry_run_lists_runs_and_executor_and_creates_nothing(tmp_path):
    results = tmp_path / "results"
    out = subprocess.run(
        [sys.executable, str(REPO / "ablations" / "run.py"), "--table", "downsample", "--cluster", "slurm",
         "--profile", "full", "--dry-run", "--results", str(results), "--partition", "a100", "--account", "vision",
         "--nodes", "3"],
        capture_output=True, text=True, check=True).stdout
    assert out.count("todo") == 3 and "epochs=120 batch=2048 lr=0.004 img=224" in out
    # submitit's parameter names; printed without a SLURM client on this machine
    for expected in ("slurm_partition=a100", "slurm_account=vision", "nodes=3", "tasks_per_node=8", "gpus_per_node=8",
                     "timeout_min=1440"):
        assert expected in out
    assert not results.exists()


def test_local_dry_run_prints_what_the_local_executor_is_given(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["--table", "downsample", "--cluster", "local", "--profile", "smoke", "--dry-run",
                 "--results", str(results), "--tasks-per-node", "2"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("  executor local: max_parallel="))
    assert line.endswith(" name=repnext-downsample tasks_per_node=2 timeout_min=10080")
    executor = make_executor("local", tmp_path / "jobs", tasks_per_node=2, name="repnext-downsample")
    assert executor.parameters == local_parameters("repnext-downsample", 2)  # submitit's public attribute
    assert not results.exists()


def _record(acc1: float, params: int, macs: int) -> dict:
    return real_record("classification", best={"acc1": acc1, "acc5": 99.0, "epoch": 3}, data="imagenet",
                       paper_setting={"fused_params": params, "macs": macs, "fuse_mode": "official", "img_size": 224,
                                      "num_classes": 1000}, paper_settings=None,
                       throughput={"images_per_second": 20.0, "device": "test CPU", "batch": 16, "form": "fused",
                                   "img_size": 224, "channels_last": True, "threads": 1},
                       epochs=4, recipe="repvit")


def test_render_paper_ours_delta_at_the_papers_precision(downsample, tmp_path):
    runs = downsample.expand("smoke")
    write_json(runs[0].folder(tmp_path) / "record.json", _record(80.123, 5_217_784, 780_000_000) | {
        "run_id": runs[0].run_id, "model": runs[0].config.model})
    write_json(runs[1].folder(tmp_path) / "record.json", {"status": "failed", "error": "boom"})
    frame = table_frame(downsample, runs, tmp_path)
    base = frame.loc["ConvNeXt-femto (baseline)"]
    assert (base[("Top-1 (%)", "paper")], base[("Top-1 (%)", "ours")], base[("Top-1 (%)", "Δ")]) == (
        "72.37", "80.12", "+7.75")
    assert (base[("Params (M)", "ours")], base[("Params (M)", "Δ")]) == ("5.22", "+0.00")
    assert ("Throughput (img/s)", "Δ") not in frame.columns  # a CPU against the paper's GPU: no delta
    failed = frame.loc["A: shortcut before the norm"]
    assert failed[("Top-1 (%)", "ours")] == "—" and "not run yet" in failed[("Runs", "")]
    md, tex = render_table(downsample, runs, tmp_path, "smoke", tmp_path / "tables")
    assert "| ConvNeXt-femto (baseline)" in md.read_text() and "1 of 3 runs complete" in md.read_text()
    assert r"\multicolumn{3}{c}{Top-1 (\%)}" in tex.read_text() and r"$\Delta$" in tex.read_text()
    assert tex_escape("a_b 5% {x}") == r"a\_b 5\% \{x\}"


def test_concurrent_records_all_land_and_readers_never_see_a_partial_file(tmp_path):
    """8 jobs (submitit's local executor, real processes) write big records at once while this process
    keeps reading them: every read is a whole record or none, and all 8 land."""
    paths = [tmp_path / "store" / f"run{i}" / "record.json" for i in range(8)]
    records = [{"status": "complete", "run": i, "history": [{"epoch": e, "loss": 1 / (e + 1)} for e in range(20000)]}
               for i in range(8)]
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local")
    executor.update_parameters(timeout_min=5)
    reads, errors, stop = [0], [], threading.Event()

    def reader():
        while not stop.is_set():
            for path in paths:
                try:
                    record = read_json(path)
                except json.JSONDecodeError as e:
                    errors.append(e)
                    continue
                if record is not None:
                    reads[0] += 1
                    assert len(record["history"]) == 20000

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        jobs = executor.map_array(write_json, paths, records)
        assert [job.result() for job in jobs] == paths
    finally:
        stop.set()
        thread.join()
    assert not errors and reads[0] > 0
    assert sorted(read_json(p)["run"] for p in paths) == list(range(8))
    assert not list((tmp_path / "store").rglob("*.tmp"))


def test_bad_spec_is_named(tmp_path):
    (tmp_path / "broken.toml").write_text('title = "x"\nnotebook = "downsample"\nreference = "x"\nmetrics = []\n'
                                          '[grid]\nmodel = ["repnext_m0"]\nwidth = [3]\n')
    with pytest.raises(SpecError, match="unknown: \\['width'\\]"):
        load_spec("broken", folder=tmp_path)


def test_slurm_without_a_reachable_cluster_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo
    assert main(["--table", "downsample", "--cluster", "slurm", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no SLURM cluster is reachable" in err and "slurm/local-up.sh" in err
    assert not (tmp_path / "r").exists()
