"""Importing the official training logs (tests/data/official_logs, copies of the released files) into the
results store: each lands in the paper-scale cell's folder and reproduces the README's numbers, which are read
from paper_tables/reference.csv, never typed here."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repnext.config import RunConfig
from repnext.reference import paper_value
from repnext.results import main

LOGS = Path(__file__).parent / "data" / "official_logs"
STARNET = "repnext_m0_sz224_4xbs512_ep300_summary.csv"

# file -> (results table, reference table, the paper-scale cell, {record metric: reference metric})
CASES = {
    "repnext_m0_distill_300e.txt": (
        "imagenet", "imagenet", dict(recipe="repvit", data="imagenet", distillation=True, epochs=300),
        {"acc1": "top1_distill"}),
    "repnext_m0_without_distill_300e.txt": (
        "imagenet", "imagenet", dict(recipe="repvit", data="imagenet", distillation=False, epochs=300),
        {"acc1": "top1"}),
    "repnext_m0_cifar_100e.txt": (
        "compact", "compact_cifar100", dict(recipe="repvit", data="cifar100", distillation=False, epochs=100),
        {"acc1": "top1_100e"}),
    # the StarNet recipe's loop runs 300 + 10 cooldown epochs: RunConfig.epochs counts them all
    STARNET: (
        "imagenet_starnet", "imagenet_starnet",
        dict(recipe="starnet", data="imagenet", distillation=False, epochs=310),
        {"acc1": "top1", "acc5": "top5"}),
}


def cell(name: str) -> RunConfig:
    return RunConfig(model="repnext_m0", profile="full", **CASES[name][2])


def run_folder(results: Path, name: str) -> Path:
    return results / CASES[name][0] / cell(name).run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("results")
    paths = [str(LOGS / name) for name in CASES]
    assert main(["import", *paths, "--results", str(results)]) == 0
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_import_lands_in_the_paper_cell_and_matches_the_readme(store, name):
    table, ref_table, _, metrics = CASES[name]
    folder = run_folder(store, name)
    # each file made exactly its own cell's folder, nothing else
    expected = {cell(other).run_id for other in CASES if CASES[other][0] == table}
    assert {p.name for p in (store / table).iterdir()} == expected and cell(name).run_id in expected
    record = json.loads((folder / "record.json").read_text())
    assert record["run_id"] == cell(name).run_id
    assert (record["status"], record["source"], record["profile"]) == ("complete", "imported", "full")
    assert record["source_file"] == str((LOGS / name).resolve())
    assert record["source_format"] == ("starnet-summary" if name == STARNET else "deit-log")
    for key, metric in metrics.items():
        ref = paper_value(ref_table, "repnext_m0", metric)
        assert ref.matches(record["best"][key]), (record["best"], ref.text)
    # the fused model's size and MACs, counted in the table's convention, are the README's too
    fine = "params_m_fine" if ref_table.startswith("compact") else "params_m"
    assert paper_value(ref_table, "repnext_m0", fine).matches(record["fused_params"] / 1e6)
    assert paper_value(ref_table, "repnext_m0", "gmacs").matches(record["macs"] / 1e9)
    assert record["num_classes"] == (100 if cell(name).data == "cifar100" else 1000)
    # config.json is what the engine writes for that config
    assert json.loads((folder / "config.json").read_text()) == json.loads(
        json.dumps(cell(name).resolve().as_dict()))


@pytest.mark.parametrize("name", list(CASES))
def test_log_is_the_deit_schema_with_best_and_final_epochs(store, name):
    record = json.loads((run_folder(store, name) / "record.json").read_text())
    history = [json.loads(line) for line in (run_folder(store, name) / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in history] == list(range(cell(name).epochs)) == list(range(record["epochs"]))
    best = max(history, key=lambda e: e["test_acc1"])
    assert record["best"] == {"acc1": best["test_acc1"], "acc5": best["test_acc5"], "epoch": best["epoch"]}
    assert record["final"]["acc1"] == history[-1]["test_acc1"]
    assert record["final"]["loss"] == history[-1]["test_loss"]
    assert all({"test_acc1", "test_acc5", "test_loss", "train_loss", "n_parameters"} <= e.keys() for e in history)
    assert record["params"] == history[0]["n_parameters"] == (2138680 if "cifar" in name else 2716480)


def test_starnet_summary_converts_columns_and_reads_its_args(store):
    history = [json.loads(line) for line in (run_folder(store, STARNET) / "log.txt").read_text().splitlines()]
    # summary.csv: epoch,train_loss,eval_loss,eval_top1,eval_top5 (percent); last row 309
    assert history[-1] == {"train_loss": 3.4747914416449412, "test_loss": 1.32931375,
                           "test_acc1": 73.67599999023437, "test_acc5": 91.61400009277344, "epoch": 309,
                           "n_parameters": 2716480}
    record = json.loads((run_folder(store, STARNET) / "record.json").read_text())
    assert (record["batch_size"], record["lr"], record["best"]["epoch"]) == (2048, 0.003, 305)


def test_the_lr_the_log_shows_is_the_recipe_batch(store):
    """The DeiT logs have no args: the epoch-2 lr says the batch (1024 distilled, 2048 not); both are the
    recipe's, so the config leaves batch_size unset and the run id is the table cell's."""
    for name, batch in (("repnext_m0_distill_300e.txt", 1024), ("repnext_m0_without_distill_300e.txt", 2048)):
        record = json.loads((run_folder(store, name) / "record.json").read_text())
        assert (record["batch_size"], record["lr"]) == (batch, 1e-3 * batch / 512)
        assert json.loads((run_folder(store, name) / "config.json").read_text())["config"]["batch_size"] is None


def test_printed_line(tmp_path, capsys):
    assert main(["import", str(LOGS / STARNET), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"imported imagenet_starnet/{cell(STARNET).run_id}: repnext_m0, starnet recipe, imagenet, 310 "
                   f"epochs, not distilled, batch 2048: best top-1 73.76 / top-5 91.63 (epoch 305) <- {STARNET}"]


def test_reimport_is_idempotent(tmp_path):
    name = "repnext_m0_cifar_100e.txt"
    assert main(["import", str(LOGS / name), "--results", str(tmp_path)]) == 0
    folder = run_folder(tmp_path, name)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["import", str(LOGS / name), "--results", str(tmp_path)]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(before) == ["config.json", "log.txt", "record.json"]


def test_refuses_to_replace_a_trained_record_without_force(tmp_path, capsys):
    name = "repnext_m0_distill_300e.txt"
    folder = run_folder(tmp_path, name)
    folder.mkdir(parents=True)
    trained = {"status": "complete", "run_id": cell(name).run_id, "source": "trained", "best": {"acc1": 75.0}}
    (folder / "record.json").write_text(json.dumps(trained))
    assert main(["import", str(LOGS / name), "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained run" in err[0] and "--force" in err[0] and name in err[0]
    assert json.loads((folder / "record.json").read_text()) == trained
    assert not (folder / "log.txt").exists()
    assert main(["import", str(LOGS / name), "--results", str(tmp_path), "--force"]) == 0
    assert json.loads((folder / "record.json").read_text())["source"] == "imported"


def test_refuses_an_unfinished_trained_run(tmp_path, capsys):
    name = "repnext_m0_distill_300e.txt"
    folder = run_folder(tmp_path, name)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pth").write_bytes(b"x")
    assert main(["import", str(LOGS / name), "--results", str(tmp_path)]) == 1
    assert "unfinished" in capsys.readouterr().err
    assert not (folder / "record.json").exists()


def one_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert captured.out == ""
    return lines[0]


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "repnext_m0_distill_300e.txt"
    assert main(["import", str(missing), "--results", str(tmp_path / "r")]) == 1
    assert one_error(capsys) == f"error: {missing}: no such file"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, what", [
    ("this is not json\n", "line 1: not JSON"),
    ('{"epoch": 0, "test_acc1": 1.0, "test_acc5": 2.0}\n[1, 2]\n', "line 2: no epoch/test_acc1/test_acc5"),
    ('{"epoch": 0, "test_acc1": "high", "test_acc5": 2.0}\n', "is not a number"),
    ("", "no epochs"),
])
def test_unparseable_log(tmp_path, capsys, text, what):
    bad = tmp_path / "repnext_m0_distill_300e.txt"
    bad.write_text(text)
    assert main(["import", str(bad), "--results", str(tmp_path / "r")]) == 1
    line = one_error(capsys)
    assert str(bad) in line and what in line, line
    assert not (tmp_path / "r").exists()


def test_unparseable_summary(tmp_path, capsys):
    bad = tmp_path / "x_summary.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["import", str(bad), "--results", str(tmp_path / "r")]) == 1
    assert "eval_top1" in one_error(capsys)


def test_uninferable_name_needs_flags(tmp_path, capsys):
    log = tmp_path / "log.txt"
    shutil.copy(LOGS / "repnext_m0_distill_300e.txt", log)
    results = str(tmp_path / "r")
    assert main(["import", str(log), "--results", results]) == 1
    assert "model" in (line := one_error(capsys)) and "--model" in line and str(log) in line
    assert main(["import", str(log), "--results", results, "--model", "repnext_m0"]) == 1
    assert "--distillation or --no-distillation" in one_error(capsys)
    assert main(["import", str(log), "--results", results, "--model", "repnext_m0", "--distillation"]) == 0
    name = "repnext_m0_distill_300e.txt"
    assert (run_folder(tmp_path / "r", name) / "record.json").is_file()


def test_summary_without_its_args_yaml(tmp_path, capsys):
    """Without args.yaml the name of a file outside the published set still gives model, epochs (ep300 + 10
    cooldown) and batch (4xbs512), not whether the run distilled."""
    summary = tmp_path / STARNET.replace("_summary", "_rerun_summary")
    shutil.copy(LOGS / STARNET, summary)
    assert main(["import", str(summary), "--results", str(tmp_path / "r")]) == 1
    assert "--no-distillation" in one_error(capsys)
    assert main(["import", str(summary), "--results", str(tmp_path / "r"), "--no-distillation"]) == 0
    assert (run_folder(tmp_path / "r", STARNET) / "record.json").is_file()


def test_args_yaml_naming_another_model_is_refused(tmp_path, capsys):
    name = STARNET.replace("repnext_m0", "repnext_m0e")
    shutil.copy(LOGS / STARNET, tmp_path / name)
    shutil.copy(LOGS / STARNET.replace("summary.csv", "args.yaml"), tmp_path / name.replace("summary.csv", "args.yaml"))
    assert main(["import", str(tmp_path / name), "--results", str(tmp_path / "r")]) == 1
    line = one_error(capsys)
    assert "repnext_m0e" in line and "repnext_m0" in line and "--model" in line


def test_truncated_log_names_the_epochs_flag(tmp_path, capsys):
    lines = (LOGS / "repnext_m0_without_distill_300e.txt").read_text().splitlines(keepends=True)
    short = tmp_path / "repnext_m0_without_distill_300e.txt"
    short.write_text("".join(lines[:120]))
    results = tmp_path / "r"
    assert main(["import", str(short), "--results", str(results)]) == 1
    assert "120 epochs" in (line := one_error(capsys)) and "--epochs 120" in line
    # imported as what it is: a 120-epoch run, which is not the table's 300-epoch cell
    assert main(["import", str(short), "--results", str(results), "--epochs", "120"]) == 0
    config = RunConfig("repnext_m0", "repvit", "full", "imagenet", False, 120)
    assert (results / "compact" / config.run_id / "record.json").is_file()


def test_command_line_module(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    name = "repnext_m0_without_distill_300e.txt"
    done = subprocess.run([sys.executable, "-m", "repnext.results", "import", str(LOGS / name), "--results",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"imported imagenet/{cell(name).run_id}: repnext_m0, repvit recipe, imagenet, "
                                  "300 epochs, not distilled, batch 2048: best top-1 72.56 / top-5 91.04 (epoch 294)")
    assert (run_folder(tmp_path, name) / "record.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "repnext.results", "import", str(tmp_path / "nope.txt")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.txt'}: no such file"]
