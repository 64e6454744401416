"""The ``released`` table: which checkpoint file each cell evaluates, and the missing ones named in one line."""
from ablations.released import released_runs
from ablations.run import main
from ablations.spec import load_spec
from repnext.store import RunPaths

from .records import write_real_record


def test_full_profile_evaluates_the_release_files_present(tmp_path, capsys):
    spec = load_spec("released")
    runs = spec.expand("full")
    (tmp_path / "repnext_m1_distill_300e.pth").write_bytes(b"")
    (tmp_path / "repnext_m0_sz224_4xbs512_ep300.pth.tar").write_bytes(b"")
    kept = released_runs(runs, "full", tmp_path / "results", tmp_path)
    assert sorted((r.config.model, r.config.recipe, r.config.distillation) for r in kept) == [
        ("repnext_m0", "starnet", False), ("repnext_m1", "repvit", True)]
    assert {r.parameters["checkpoint"] for r in kept} == {
        str(tmp_path / "repnext_m1_distill_300e.pth"), str(tmp_path / "repnext_m0_sz224_4xbs512_ep300.pth.tar")}
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("released: 10 of 12 checkpoints not in")  # 6 + 3 + 3 releases
    assert "repnext_m5_distill_300e.pth" in out[0] and "repnext_m2_sz224_4xbs256_ep300_distill.pth.tar" in out[0]


def test_smoke_profile_evaluates_the_imagenet_tables_finished_runs(tmp_path, capsys):
    results = tmp_path / "results"
    source = load_spec("imagenet").expand("smoke")
    done = source[0]
    paths = RunPaths(done.folder(results))
    paths.root.mkdir(parents=True)
    paths.checkpoint.write_bytes(b"")
    write_real_record(paths.root, "classification")
    kept = released_runs(load_spec("released").expand("smoke"), "smoke", results, None)
    assert [(r.run_id, r.parameters["checkpoint"]) for r in kept] == [(done.run_id, str(paths.checkpoint))]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "11 of 12 checkpoints not trained yet by the imagenet table" in out[0]


def test_full_profile_without_checkpoints_is_one_line(tmp_path, capsys):
    argv = ["--table", "released", "--profile", "full", "--data-root", str(tmp_path), "--results", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --checkpoints DIR" in err and len(err.splitlines()) == 1
    assert main([*argv, "--checkpoints", str(tmp_path / "nope")]) == 2
    assert "--checkpoints" in capsys.readouterr().err


def test_rendering_without_checkpoints_keeps_the_cells_that_have_a_release(tmp_path, capsys):
    kept = released_runs(load_spec("released").expand("full"), "full", tmp_path, None)
    assert len(kept) == 12 and all("checkpoint" not in r.parameters for r in kept)  # 6 + 3 + 3 releases
    assert capsys.readouterr().out == ""


def test_rendering_before_any_checkpoint_exists_writes_a_table_without_rows(tmp_path, capsys):
    tables = tmp_path / "tables"
    assert main(["--table", "released", "--profile", "smoke", "--render-only", "--results", str(tmp_path / "r"),
                 "--tables-dir", str(tables)]) == 0
    md = (tables / "released.md").read_text()
    assert "| Model   | Runs   |" in md and "0 of 0 runs complete" in md and (tables / "released.tex").is_file()
    assert "12 of 12 checkpoints not trained yet" in capsys.readouterr().out
