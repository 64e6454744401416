"""The whole official logs/ folder imports in one call, with no flags (issue 13 part 1).

The fixture is the upstream layout (official_logs.csv: 61 files): the five released samples in tests/data where
they belong, every other file synthesized from a sample of its format with its run's numbers: the parameter
count its model has here, the batch's lr schedule and, as best top-1, the README's value (reference.csv).
"""
import contextlib
import csv
import functools
import json
import math
import shutil
from pathlib import Path

import pytest

from ablations.render import render_table, table_frame
from ablations.spec import load_spec
from repnext.complexity import measure
from repnext.config import RunConfig
from repnext.logs import official_files
from repnext.reference import paper_value, paper_values
from repnext.results import main

SAMPLES = Path(__file__).parent / "data" / "official_logs"
DUPLICATE = "repnext_m0_imgnet_300e.txt"  # byte-identical to repnext_m0_without_distill_300e.txt upstream
CLASSES = {"imagenet": 1000, "cifar100": 100}


@functools.cache
def train_params(model: str, data: str) -> int:
    return measure(model, CLASSES[data], 224, "official").train_params


def target(name: str) -> tuple[str, str | None]:
    """The best top-1 (and top-5) a file's run shows, as printed: the README's (reference.csv), the ablation
    file's suffix (best top-1 x 100), or for StarNet-S1, which reference.csv does not hold, a made-up one."""
    official = official_files()[name]
    c, table = official.config, official.table
    suffix = "_distill" if c.distillation else ""
    if table == "imagenet":
        return paper_value("imagenet", c.model, f"top1{suffix}").text, None
    if table == "imagenet_starnet":
        return (paper_value(table, c.model, f"top1{suffix}").text, paper_value(table, c.model, f"top5{suffix}").text)
    if table in ("srp", "downsample"):
        return f"{int(Path(name).stem.rsplit('_', 1)[1]) / 100:.2f}", None
    found = paper_values(f"compact_{c.data}", c.model, f"top1_{c.epochs}e")
    return (found[0].text if found else f"{60 + c.epochs / 50:.2f}"), None


def printed(value: float, like: str) -> str:
    """``value`` with as many decimals as ``like``."""
    return f"{value:.{len(like.partition('.')[2])}f}"


def _deit_log(name: str) -> str:
    c = official_files()[name].config
    sample = "repnext_m0_distill_300e.txt" if c.distillation else "repnext_m0_without_distill_300e.txt"
    base = [json.loads(line) for line in (SAMPLES / sample).read_text().splitlines()]
    n_params = train_params(c.model, c.data)
    # the sample's epochs (its lr schedule: epoch 2 gives the batch), its last one repeated beyond them
    entries = [dict(base[min(i, len(base) - 1)], epoch=i, n_parameters=n_params) for i in range(c.epochs)]
    top1, best = float(target(name)[0]), max(e["test_acc1"] for e in entries)
    for e in entries:
        e["test_acc1"] *= top1 / best
    return "".join(json.dumps(e) + "\n" for e in entries)


def _summary(name: str, dest: Path) -> None:
    c = official_files()[name].config
    sample = SAMPLES / "repnext_m0_sz224_4xbs512_ep300_summary.csv"
    with sample.open(newline="") as f:
        rows = list(csv.DictReader(f))
    top1, top5 = target(name)
    best = max(rows, key=lambda r: float(r["eval_top1"]))
    scale1, scale5 = float(top1) / float(best["eval_top1"]), float(top5) / float(best["eval_top5"])
    for r in rows:
        r["eval_top1"], r["eval_top5"] = float(r["eval_top1"]) * scale1, float(r["eval_top5"]) * scale5
    with dest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if not c.model.endswith("e"):  # upstream, only M0-M2 have their args.yaml; the E runs reuse theirs
        args = (SAMPLES / "repnext_m0_sz224_4xbs512_ep300_args.yaml").read_text().replace(
            "model: repnext_m0", f"model: {c.model}")
        if c.distillation:
            args = args.replace("batch_size: 512", "batch_size: 256") + "distillation_type: hard\n"
        dest.with_name(dest.name.replace("summary.csv", "args.yaml")).write_text(args)


def build_official_tree(root: Path) -> Path:
    """``root/logs`` as upstream: the samples copied, the other files synthesized."""
    logs = root / "logs"
    for name, official in official_files().items():
        dest = logs / official.file
        dest.parent.mkdir(parents=True, exist_ok=True)
        sample = SAMPLES / ("repnext_m0_without_distill_300e.txt" if name == DUPLICATE else name)
        if sample.is_file():
            shutil.copy(sample, dest)
            args = sample.with_name(sample.name.replace("summary.csv", "args.yaml"))
            if name.endswith("summary.csv") and args.is_file():
                shutil.copy(args, dest.with_name(args.name))
        elif name.endswith("summary.csv"):
            _summary(name, dest)
        else:
            dest.write_text(_deit_log(name))
    return logs


def log_files(logs: Path) -> list[str]:
    """What ``find logs -name '*.txt' -o -name '*_summary.csv'`` lists."""
    return sorted(str(p) for p in logs.rglob("*") if p.name.endswith((".txt", "_summary.csv")))


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("official")
    logs = build_official_tree(root)
    results = root / "results"
    capture = root / "out.txt"
    with capture.open("w") as f, contextlib.redirect_stdout(f):
        assert main(["import", "--results", str(results), *log_files(logs)]) == 0
    return logs, results, capture.read_text().splitlines()


def record_of(results: Path, name: str) -> dict:
    official = official_files()[name]
    return json.loads((results / official.table / official.config.run_id / "record.json").read_text())


@pytest.mark.slow  # the one-call import of 61 files: about a minute on 2 cores
def test_one_call_imports_every_published_file(imported):
    logs, results, out = imported
    assert len(log_files(logs)) == len(official_files()) == 61
    assert out[-1] == "61 files: 60 imported, 1 unchanged"
    records = list(results.glob("*/*/record.json"))
    assert len(records) == 60  # one run published twice is one record
    by_table = {}
    for p in records:
        by_table[p.parent.parent.name] = by_table.get(p.parent.parent.name, 0) + 1
    assert by_table == {"imagenet": 12, "downsample": 3, "srp": 2, "compact": 31, "imagenet_starnet": 12}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(official_files()))
def test_each_file_lands_in_its_cell_with_its_numbers(imported, name):
    _, results, _ = imported
    official = official_files()[name]
    record = record_of(results, name)
    c = official.config
    assert (record["model"], record["recipe"], record["data"], record["distillation"], record["epochs"]) == (
        c.model, c.recipe, c.data, c.distillation, c.epochs)
    assert record["batch_size"] == c.resolve().batch_size == (1024 if c.distillation else 2048)
    top1, top5 = target(name)
    assert printed(record["best"]["acc1"], top1) == top1
    if top5 is not None:
        assert printed(record["best"]["acc5"], top5) == top5
    if name.endswith(".txt"):  # the DeiT logs' parameter count: the model's training form, as logged
        assert record["params"] == train_params(c.model, c.data)


@pytest.mark.slow
def test_e_forms_are_the_e_models_and_leave_m0_alone(imported):
    _, results, _ = imported
    m0e = record_of(results, "repnext_m0_e_cifar_100e.txt")
    assert (m0e["model"], m0e["params"], m0e["best"]["acc1"]) == ("repnext_m0e", 2298620, pytest.approx(73.56))
    m0 = record_of(results, "repnext_m0_cifar_100e.txt")
    assert (m0["model"], f"{m0['best']['acc1']:.2f}") == ("repnext_m0", "74.53")
    assert m0e["run_id"] != m0["run_id"]
    assert record_of(results, "repnext_m1e_sz224_4xbs256_ep300_distill_summary.csv")["model"] == "repnext_m1e"


@pytest.mark.slow
def test_convnext_femto_ablation_files(imported):
    _, results, _ = imported
    got = {s: record_of(results, f"convnext_femto_120e_{s}.txt") for s in ("7237", "7419", "7428")}
    assert {s: (r["model"], f"{r['best']['acc1']:.2f}") for s, r in got.items()} == {
        "7237": ("convnext_femto", "72.37"), "7419": ("convnext_femto_ds_b", "74.19"),
        "7428": ("convnext_femto_ds_a", "74.28")}
    assert got["7419"]["params"] == got["7428"]["params"] == 5252728
    expected = RunConfig("convnext_femto_ds_a", "repvit", "full", "imagenet", False, 120).run_id
    assert (results / "downsample" / expected / "record.json").is_file()


@pytest.mark.slow
def test_srp_ablation_files(imported):
    _, results, _ = imported
    m1, plain = record_of(results, "repnext_m1_120e_7597.txt"), record_of(results, "repnext_m1_120e_7534.txt")
    assert (m1["model"], m1["params"]) == ("repnext_m1", 5323316)
    assert (plain["model"], plain["params"]) == ("repnext_m1_nosrp", 5230424)
    for model in ("repnext_m1", "repnext_m1_nosrp"):
        assert (results / "srp" / RunConfig(model, "repvit", "full", "imagenet", False, 120).run_id).is_dir()


@pytest.mark.slow
def test_duplicate_is_one_record(imported):
    logs, results, out = imported
    pair = {str(logs / "compact" / "imgnet" / DUPLICATE), str(logs / "repnext_m0_without_distill_300e.txt")}
    assert len({Path(p).read_bytes() for p in pair}) == 1
    record = record_of(results, DUPLICATE)
    assert record == record_of(results, "repnext_m0_without_distill_300e.txt") and record["source_file"] in pair
    # the file imported second (find's order) is the same run: nothing written, said so
    second = Path(next(iter(pair - {record["source_file"]}))).name
    line = next(line for line in out if line.startswith("unchanged "))
    assert line.startswith(f"unchanged imagenet/{record['run_id']}: repnext_m0, repvit recipe, imagenet, 300 "
                           "epochs, not distilled, batch 2048")
    assert line.endswith(f"<- {second} (same bytes as {record['source_file']})")
    assert not (results / "compact" / record["run_id"]).exists()


@pytest.mark.slow
def test_starnet_s1_is_timms(imported):
    _, results, _ = imported
    for data in ("cifar", "imgnet"):
        record = record_of(results, f"starnet_s1_{data}_300e.txt")
        assert record["model"] == "starnet_s1" and record["run_id"].startswith("starnet_s1-")
    assert record_of(results, "starnet_s1_imgnet_100e.txt")["params"] == 2869168  # as the published log says


@pytest.mark.slow
def test_distillation_and_batch_from_the_names_and_lr(imported):
    _, results, _ = imported
    for name, official in official_files().items():
        record = record_of(results, name)
        distilled = "_distill" in name and "without" not in name
        assert record["distillation"] == distilled
        assert record["batch_size"] == (1024 if distilled else 2048)
        assert record["lr"] == (3e-3 if official.config.recipe == "starnet" else 1e-3 * record["batch_size"] / 512)


def _copy_tree(imported, tmp_path) -> tuple[Path, Path]:
    logs, results, _ = imported
    shutil.copytree(results, tmp_path / "results")
    return logs, tmp_path / "results"


@pytest.mark.slow
def test_dry_run_says_what_each_file_would_become_and_writes_nothing(imported, tmp_path, capsys):
    logs, _, out = imported
    results = tmp_path / "results"
    assert main(["import", "--results", str(results), "--dry-run", *log_files(logs)]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert dry[-1] == "61 files: 60 would import, 1 unchanged"
    assert [line.replace("would import ", "imported ", 1) for line in dry[:-1]] == out[:-1]
    assert not results.exists()


@pytest.mark.slow
def test_reimport_is_a_no_op(imported, tmp_path, capsys):
    logs, results = _copy_tree(imported, tmp_path)
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert main(["import", "--results", str(results), *log_files(logs)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "61 files: 61 unchanged"
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["acc", "n_parameters"])
def test_another_file_of_an_imported_run_is_refused_unless_forced(imported, tmp_path, capsys, edit):
    """issue 16 item 15: an edited log, or one whose n_parameters is another model's, never replaces silently."""
    logs, results = _copy_tree(imported, tmp_path)
    name = "repnext_m0_cifar_100e.txt"
    entries = [json.loads(line) for line in (logs / "compact" / "cifar" / name).read_text().splitlines()]
    if edit == "acc":
        entries[-1]["test_acc1"] = 99.99
    else:
        entries = [dict(e, n_parameters=2298620) for e in entries]
    edited = tmp_path / "edited" / name
    edited.parent.mkdir()
    edited.write_text("".join(json.dumps(e) + "\n" for e in entries))
    folder = results / "compact" / official_files()[name].config.run_id
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["import", "--results", str(results), str(edited)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {edited} and ") and name in err and "--force" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert main(["import", "--results", str(results), "--dry-run", "--force", str(edited)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"would replace compact/{folder.name}: repnext_m0,") and f"replaced {folder}" in out[0]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert main(["import", "--results", str(results), "--force", str(edited)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("replaced compact/") and f"imported from {logs / 'compact' / 'cifar' / name}" in out[0]
    assert json.loads((folder / "record.json").read_text())["source_file"] == str(edited)


def test_two_files_of_one_run_in_one_call(tmp_path, capsys):
    first = tmp_path / "a" / "repnext_m0_cifar_100e.txt"
    second = tmp_path / "b" / "repnext_m0_cifar_100e.txt"
    for p in (first, second):
        p.parent.mkdir()
    shutil.copy(SAMPLES / first.name, first)
    second.write_text(first.read_text().replace('"epoch": 99,', '"epoch": 99, "note": 1,'))
    assert main(["import", "--results", str(tmp_path / "r"), "--dry-run", str(first), str(second)]) == 1
    captured = capsys.readouterr()
    assert not (tmp_path / "r").exists()
    assert captured.out.splitlines()[0].startswith("would import compact/repnext_m0-")
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and str(first) in err[0] and str(second) in err[0]


def test_a_published_name_with_another_batch_is_refused(tmp_path, capsys):
    """The published repnext_m0_distill_300e.txt ran batch 1024 (peak lr 2e-3): a log of that name whose lr
    says 2048 is not that file."""
    fake = tmp_path / "repnext_m0_distill_300e.txt"
    shutil.copy(SAMPLES / "repnext_m0_without_distill_300e.txt", fake)
    assert main(["import", "--results", str(tmp_path / "r"), str(fake)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(fake) in err[0] and "batch 2048" in err[0] and "batch 1024" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_srp_table_shows_the_official_logs_in_every_profile(imported):
    _, results, _ = imported
    spec = load_spec("srp")
    official = {"RepNeXt-M1 (SRP branches)": "75.97", "RepNeXt-M1, plain DW convs": "75.34"}
    for profile, ours in (("smoke", {k: "—" for k in official}), ("full", official)):
        frame = table_frame(spec, spec.expand(profile), results)
        assert frame[("Top-1, official logs (%)", "")].to_dict() == official
        assert frame[("Top-1 (%)", "ours")].to_dict() == ours  # full: the paper-scale cells are the imported runs


@pytest.mark.slow
def test_compact_table_and_figure_from_the_official_logs(imported, tmp_path):
    _, results, _ = imported
    spec = load_spec("compact")
    frame = table_frame(spec, spec.expand("full"), results)
    m0e = frame.loc["RepNeXt-M0E"]
    top1 = [h for h, part in frame.columns if part == "Δ" and h.endswith("e (%)")]
    assert len(top1) == 8 and all(m0e[(h, "Δ")] == "+0.00" for h in top1)
    assert (m0e[("CIFAR-100 100e (%)", "ours")], m0e[("ImageNet 400e (%)", "ours")]) == ("73.56", "72.53")
    # the ImageNet 300e M0 cell is the imagenet table's run, imported once from either copy
    assert frame.loc["RepNeXt-M0"][("ImageNet 300e (%)", "ours")] == "72.56"
    starnet = frame.loc["StarNet-S1 (official logs)"]
    assert (starnet[("CIFAR-100 100e (%)", "paper")], starnet[("CIFAR-100 100e (%)", "ours")]) == ("—", "62.00")
    assert starnet[("ImageNet 400e (%)", "ours")] == "68.00" and "starnet_s1_imgnet_400e.txt" in starnet[("Runs", "")]
    smoke = table_frame(spec, spec.expand("smoke"), results)
    assert smoke.loc["StarNet-S1 (official logs)"][("ImageNet 400e (%)", "ours")] == "68.00"
    assert smoke.loc["RepNeXt-M0E"][("ImageNet 400e (%)", "ours")] == "—"  # smoke's own runs: not run
    written = render_table(spec, spec.expand("full"), results, "full", tmp_path)
    assert {p.name for p in written} == {"compact.md", "compact.tex", "compact.png", "compact.pdf"}
    assert "| StarNet-S1 (official logs) " in (tmp_path / "compact.md").read_text()


def test_a_nan_loss_in_a_published_log_imports(tmp_path):
    """Some published logs hold ``"test_loss": NaN`` (starnet_s1_imgnet_100e.txt, epoch 7): valid for Python's
    json, and the run's accuracies are still finite."""
    log = tmp_path / "repnext_m0_cifar_100e.txt"
    log.write_text((SAMPLES / log.name).read_text().replace('"test_loss": 4.321741853441511', '"test_loss": NaN'))
    assert main(["import", "--results", str(tmp_path / "r"), str(log)]) == 0
    run = official_files()[log.name].config.run_id
    history = [json.loads(line) for line in (tmp_path / "r" / "compact" / run / "log.txt").read_text().splitlines()]
    assert math.isnan(history[3]["test_loss"]) and history[3]["test_acc1"] == 5.890000183105469


def test_an_unreadable_record_in_the_store_is_named(tmp_path, capsys):
    name = "repnext_m0_cifar_100e.txt"
    record = tmp_path / "r" / "compact" / official_files()[name].config.run_id / "record.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"status": "comp')
    assert main(["import", "--results", str(tmp_path / "r"), str(SAMPLES / name)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {record}: not a JSON record; move it away or fix it, then import again"]
    assert record.read_text() == '{"status": "comp'
