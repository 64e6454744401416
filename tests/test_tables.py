"""Every table spec at paper scale: the runs it lists, and tables rebuilt from the official logs."""
import json
import re
from pathlib import Path

import pytest

from ablations.render import index_entry, render_index, table_frame
from ablations.run import main
from ablations.spec import load_spec
from repnext.config import PAPER_NUM_CLASSES
from repnext.results import main as import_logs

from .records import write_real_record

LOGS = Path(__file__).parent / "data" / "official_logs"


@pytest.mark.parametrize("table, expected", [
    # (epochs, total batch, lr, distillation) -> number of runs, from the paper's recipes
    ("imagenet", {("300", "1024", "0.002", "True"): 6, ("300", "2048", "0.004", "False"): 6}),
    ("imagenet_starnet", {("310", "1024", "0.003", "True"): 6, ("310", "2048", "0.003", "False"): 6}),
    ("compact", {(e, "2048", "0.004", "False"): 6 for e in ("100", "200", "300", "400")}),
    ("downsample", {("120", "2048", "0.004", "False"): 3}),
    ("srp", {("120", "2048", "0.004", "False"): 2}),
])
def test_full_dry_run_lists_the_papers_runs(table, expected, tmp_path, capsys):
    assert main(["--table", table, "--profile", "full", "--cluster", "slurm", "--dry-run",
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    runs = re.findall(r"epochs=(\d+) batch=(\d+) lr=([\d.]+) img=224 distill=(\w+)", out)
    counts = {key: runs.count(key) for key in set(runs)}
    assert counts == expected
    assert "data=imagenet" in out or "data=cifar100" in out
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    files = [LOGS / "repnext_m0_distill_300e.txt", LOGS / "repnext_m0_without_distill_300e.txt",
             LOGS / "repnext_m0_cifar_100e.txt", LOGS / "repnext_m0_sz224_4xbs512_ep300_summary.csv"]
    assert import_logs(["import", *map(str, files), "--results", str(results)]) == 0
    return results


@pytest.mark.parametrize("table, cells", [
    ("imagenet", {("Top-1 distill (%)", "ours"): "74.2", ("Top-1 distill (%)", "Δ"): "+0.0",
                  ("Top-1 (%)", "ours"): "72.6", ("Top-1 (%)", "Δ"): "+0.0",
                  ("Params (M)", "ours"): "2.3", ("GMACs", "ours"): "0.4"}),
    ("imagenet_starnet", {("Top-1 (%)", "ours"): "73.8", ("Top-1 (%)", "Δ"): "+0.0",
                          ("Top-5 (%)", "ours"): "91.6", ("Top-5 (%)", "Δ"): "+0.0",
                          ("Top-1 distill (%)", "ours"): "—"}),
    ("compact", {("CIFAR-100 100e (%)", "ours"): "74.53", ("CIFAR-100 100e (%)", "Δ"): "+0.00",
                 ("CIFAR-100 params (M)", "ours"): "2.0", ("CIFAR-100 200e (%)", "ours"): "—"}),
])
def test_tables_from_the_official_logs_show_the_papers_numbers(imported, table, cells):
    spec = load_spec(table)
    frame = table_frame(spec, spec.expand("full"), imported)
    row = frame.loc["RepNeXt-M0"]
    assert {key: row[key] for key in cells} == cells
    assert "imported from" in row[("Runs", "")]


def test_render_only_writes_tables_without_data_or_jobs(imported, tmp_path):
    assert main(["--table", "imagenet", "--profile", "full", "--render-only", "--results", str(imported),
                 "--tables-dir", str(tmp_path)]) == 0
    md = (tmp_path / "imagenet.md").read_text()
    assert "| RepNeXt-M0 " in md and "imported from repnext_m0_distill_300e.txt" in md
    assert not (imported / ".submitit").exists()


def test_compact_table_draws_its_convergence_figure(imported, tmp_path):
    assert main(["--table", "compact", "--profile", "full", "--render-only", "--results", str(imported),
                 "--tables-dir", str(tmp_path)]) == 0
    for name in ("compact.md", "compact.tex", "compact.png", "compact.pdf"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "| RepNeXt-M0 " in (tmp_path / "compact.md").read_text()


@pytest.mark.slow
def test_equivalence_table_shows_float32_rounding_for_every_exact_form(tmp_path):
    results, tables = tmp_path / "results", tmp_path / "tables"
    assert main(["--table", "equivalence", "--cluster", "local", "--only", "repnext_m0", "--results", str(results),
                 "--tables-dir", str(tables), "--no-progress"]) == 0
    (record,) = [json.loads(p.read_text()) for p in results.glob("equivalence/*/record.json")]
    scale = record["logit_scale"]
    for form in ("official", "full", "single_branch"):
        assert record["forms"][form]["max_abs_error"] < 1e-5 * max(scale, 1)
    assert record["forms"]["single_branch_plain"]["max_abs_error"] > 1e-2  # the naive collapse is not exact
    row = table_frame(load_spec("equivalence"), load_spec("equivalence").expand("smoke"), results).loc["RepNeXt-M0"]
    assert (row[("E model params (M)", "ours")], row[("E model params (M)", "Δ")]) == ("2.5", "+0.0")
    assert row[("Params (M)", "ours")] == "2.3" and row[("GMACs", "ours")] == "0.4"
    assert "Naive single-branch" in (tables / "equivalence.md").read_text()


def test_a_smoke_run_shared_by_two_datasets_fills_each_cell_with_its_own_counts(tmp_path):
    """Smoke trains CIFAR-100 and ImageNet cells on the digits: one run, two class counts in the table."""
    spec = load_spec("compact")
    runs = spec.expand("smoke")
    m0 = [r for r in runs if r.config.model == "repnext_m0" and r.paper["epochs"] == 100]
    assert len(m0) == 2 and m0[0].run_id == m0[1].run_id and {r.paper["data"] for r in m0} == set(PAPER_NUM_CLASSES)
    settings = {data: {"fused_params": 2_039_000 if n == 100 else 2_328_000, "macs": 388_000_000, "train_params": 1,
                       "fuse_mode": "full", "img_size": 224, "num_classes": n} for data, n in PAPER_NUM_CLASSES.items()}
    write_real_record(m0[0].folder(tmp_path), "classification", best={"acc1": 90.0, "acc5": 99.0},
                      paper_setting=settings["cifar100"], paper_settings=settings)
    row = table_frame(spec, runs, tmp_path).loc["RepNeXt-M0"]
    assert (row[("CIFAR-100 params (M)", "ours")], row[("CIFAR-100 params (M)", "Δ")]) == ("2.0", "+0.0")
    assert (row[("ImageNet params (M)", "ours")], row[("ImageNet params (M)", "Δ")]) == ("2.3", "+0.0")
    assert row[("CIFAR-100 100e (%)", "ours")] == row[("ImageNet 100e (%)", "ours")] == "90.00"


def test_index_links_rendered_tables_and_states_their_scale(imported, tmp_path):
    assert main(["--table", "imagenet", "--profile", "full", "--render-only", "--results", str(imported),
                 "--tables-dir", str(tmp_path)]) == 0
    spec = load_spec("imagenet")
    entry = index_entry(spec, spec.expand("full"), imported, "full", tmp_path)
    assert "[imagenet.md](imagenet.md), [imagenet.tex](imagenet.tex)" in entry
    assert "2 of 12 runs complete" in entry and "- 2 run(s) imported from logs" in entry
    srp = load_spec("srp")
    text = render_index([entry, index_entry(srp, srp.expand("full"), imported, "full", tmp_path)], "full",
                        tmp_path).read_text()
    assert text.startswith("# Paper tables") and "0 of 2 runs complete" in text and "not rendered yet" in text


def test_render_all_writes_the_index(imported, tmp_path):
    assert main(["--table", "all", "--profile", "full", "--render-only", "--results", str(imported),
                 "--tables-dir", str(tmp_path)]) == 0
    index = (tmp_path / "README.md").read_text()
    for table in ("imagenet", "imagenet_starnet", "compact", "equivalence", "srp", "downsample", "latency"):
        assert f"[{table}.md]({table}.md)" in index


def test_equivalence_table_takes_the_e_models_accuracy_from_their_starnet_runs(tmp_path):
    starnet = load_spec("imagenet_starnet")
    for run in starnet.expand("smoke"):
        if run.config.model == "repnext_m0e":
            acc = 61.0 if run.paper["distillation"] else 62.0
            write_real_record(run.folder(tmp_path), "classification", model=run.config.model, best={"acc1": acc})
    spec = load_spec("equivalence")
    frame = table_frame(spec, spec.expand("smoke"), tmp_path)
    m0, m3 = frame.loc["RepNeXt-M0"], frame.loc["RepNeXt-M3"]
    assert (m0[("E model Top-1 (%)", "paper")], m0[("E model Top-1 (%)", "ours")]) == ("73.9", "62.0")
    assert (m0[("E model Top-1 distill (%)", "paper")], m0[("E model Top-1 distill (%)", "ours")]) == ("75.6", "61.0")
    assert m3[("E model Top-1 (%)", "ours")] == "—"  # the paper trained no M3E
