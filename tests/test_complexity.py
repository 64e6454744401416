"""The model table: measured params/MACs equal the paper's at its printed precision (values read from
paper_tables/reference.csv, never typed here)."""
import csv
import io
import json
import subprocess
import sys

import pytest

import repnext.complexity
from repnext.complexity import complexity, count_macs, measure
from repnext.counts import Complexity, counting_fingerprint, measured_counts, sources_fingerprint, up_to_date
from repnext.models import REGISTERED_MODELS
from repnext.models.__main__ import main, measure_rows, model_rows
from repnext.reference import paper_value, paper_values, reference_path


@pytest.fixture(scope="module")
def rows():
    return {(r.table, r.model): r for r in measure_rows(model_rows(), progress=False)}


# (table, model) whose params and MACs the issue asks to match
PAPER_ROWS = (
    [("imagenet", f"repnext_m{i}") for i in range(6)]
    + [("imagenet_starnet", f"repnext_m{i}e") for i in range(3)]
    + [("downsample", m) for m in ("convnext_femto", "convnext_femto_ds_a", "convnext_femto_ds_b")]
    + [("compact_imagenet", m) for m in ("repnext_m0", "repnext_m0e", "repvit_m0_6")]
)
COMPACT_CIFAR = [("compact_cifar100", m) for m in ("repnext_m0", "repnext_m0e", "repvit_m0_6")]


@pytest.mark.parametrize("key", PAPER_ROWS, ids="/".join)
def test_params_and_macs_match_the_paper(rows, key):
    row = rows[key]
    assert row.paper_params.matches(row.measured.fused_params / 1e6), (
        row.measured.fused_params, row.paper_params.text)
    assert row.paper_gmacs.matches(row.measured.macs / 1e9), (row.measured.macs, row.paper_gmacs.text)


@pytest.mark.parametrize("key", COMPACT_CIFAR, ids="/".join)
def test_cifar100_compact_params_match_to_the_thousandth(rows, key):
    row = rows[key]
    assert row.num_classes == 100
    assert row.paper_params.metric == "params_m_fine" and row.paper_params.decimals == 3
    assert row.paper_params.matches(row.measured.fused_params / 1e6)
    # the README prints the same params to 0.1M: consistent with the finer value
    coarse = paper_value(*key, "params_m")
    assert coarse.matches(row.measured.fused_params / 1e6)


def test_cifar100_table_reuses_the_imagenet_macs(rows):
    """The README's CIFAR-100 compact table prints the 1000-class MACs: RepViT-M0.6 has 0.3848 G with a
    100-class head (0.38 at the printed precision), 0.3851 G with the ImageNet head (0.39, as printed)."""
    cifar, imagenet = rows[("compact_cifar100", "repvit_m0_6")], rows[("compact_imagenet", "repvit_m0_6")]
    assert not cifar.paper_gmacs.matches(cifar.measured.macs / 1e9)
    assert cifar.paper_gmacs.matches(imagenet.measured.macs / 1e9)


def test_every_registered_model_is_in_the_table(rows):
    assert set(REGISTERED_MODELS) <= {model for _, model in rows}


def test_training_form_is_larger_than_fused(rows):
    for (_, model), row in rows.items():
        if model.startswith("repnext") or model == "repvit_m0_6":
            assert row.measured.train_params > row.measured.fused_params, model


def test_macs_scale_with_resolution():
    small, large = measure("repnext_m0", img_size=128), measure("repnext_m0", img_size=256)
    assert 3.9 < large.macs / small.macs < 4.1


def test_macs_count_convolutions_exactly():
    import torch.nn as nn

    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (1, 3, 10, 10)) == 8 * 3 * 9 * 100


def test_cli_prints_every_row_as_csv(capsys, rows, tmp_path):
    assert main(["--format", "csv", "--quiet", "--counts", str(tmp_path / "models.json")]) == 0
    # the exact counts behind the table, one per setting, as the runs read them
    counts = measured_counts(tmp_path / "models.json")
    assert set(counts.values()) == {r.measured for r in rows.values()} and len(counts) < len(rows)
    assert counts[("repnext_m1", 1000, 224, "official")] == rows[("imagenet", "repnext_m1")].measured
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == len(model_rows())
    m1 = next(r for r in table if r["table"] == "imagenet" and r["model"] == "repnext_m1")
    assert m1["paper params (M)"] == paper_value("imagenet", "repnext_m1", "params_m").text
    assert m1["matches paper"] == "yes"


def test_the_counts_are_up_to_date_until_their_sources_change(tmp_path, monkeypatch):
    table, counts = tmp_path / "models.md", tmp_path / "models.json"
    table.write_text("made before")
    counts.write_text(json.dumps({**sources_fingerprint(), "counts": []}))
    check = [sys.executable, "-c", "import runpy, sys; sys.argv[1:] = sys.argv[2:]; "
             "runpy.run_module('repnext.counts', run_name='__main__')", "--", str(table), str(counts)]
    # `make models` asks this first: a fresh clone's files are up to date, and asking imports no torch
    assert subprocess.run(check).returncode == 0
    probe = subprocess.run([sys.executable, "-c", "import sys, repnext.counts; print('torch' in sys.modules)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "False"
    changed = tmp_path / "reference.csv"  # the paper's values changed: the table prints them, so it is redone
    changed.write_text(reference_path().read_text() + "\n")
    monkeypatch.setattr("repnext.counts.reference_path", lambda: changed)
    assert up_to_date(table, counts) is False
    counts.write_text(json.dumps({**sources_fingerprint(), "counts": []}))
    assert up_to_date(table, counts) and not up_to_date(tmp_path / "missing.md", counts)
    assert subprocess.run([*check[:-2], str(table), str(tmp_path / "missing.json")]).returncode == 1


def test_reference_values_are_well_formed():
    values = paper_values()
    assert len({(v.table, v.model, v.metric) for v in values}) == len(values), "a fact typed twice"
    for v in values:
        assert v.source and float(v.text) >= 0


def test_runs_read_the_measured_counts_and_count_what_is_not_there(tmp_path, monkeypatch):
    fake = Complexity("repnext_m0", 1000, 224, "official", 1, 2, 3)  # impossible numbers: read, not counted
    path, stale = tmp_path / "models.json", tmp_path / "stale.json"
    path.write_text(json.dumps({"fingerprint": counting_fingerprint(), "counts": [fake.as_dict()]}))
    stale.write_text(json.dumps({"fingerprint": "0" * 16, "counts": [fake.as_dict()]}))
    assert measured_counts(path) == {("repnext_m0", 1000, 224, "official"): fake}
    assert measured_counts(stale) == measured_counts(tmp_path / "missing.json") == {}  # other code: not trusted
    monkeypatch.setattr(repnext.complexity, "measured_counts", lambda: measured_counts(path))
    assert complexity("repnext_m0", 1000, 224, "official") == fake
    assert complexity("repnext_m0", 100, 224, "official") == measure("repnext_m0", 100, 224, "official")


def test_the_committed_counts_are_the_model_tables(rows):
    counts = measured_counts()
    if not counts:
        pytest.skip("paper_tables/models.json was measured by other code or versions: `make models` renews it")
    assert counts == {(c.model, c.num_classes, c.img_size, c.fuse_mode): c for c in (r.measured for r in rows.values())}
