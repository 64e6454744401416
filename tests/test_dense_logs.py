"""Importing the official mmdet/mmseg JSON logs: selection, rounding, header fields, the store, the command."""
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from ablations.spec import load_spec
from repnext.dense.official_logs import DenseLogError, import_dense_log, main, metrics, parse, percent, read_config
from repnext.store import read_json

LOGS = Path(__file__).parent / "data" / "official_logs" / "dense"
COCO, ADE = LOGS / "repnext_m3_coco.json", LOGS / "repnext_m3_ade20k.json"
README_M3 = {"box_ap": 40.8, "box_ap50": 62.4, "box_ap75": 44.7, "mask_ap": 37.8, "mask_ap50": 59.5,
             "mask_ap75": 40.6}


def synthesize(tmp_path: Path, name: str, source: Path, config_edits: dict, vals: list[dict] | None = None) -> Path:
    """A variant of an official log: its header with ``config_edits`` (text replacements) and, for ``vals``,
    those evaluation lines (numbers as written, one per epoch) in place of the logged ones."""
    lines = source.read_text().splitlines()
    header = json.loads(lines[0])
    for old, new in config_edits.items():
        assert old in header["config"], old
        header["config"] = header["config"].replace(old, new)
    body = lines[1:]
    if vals is not None:
        train = [line for line in body if '"mode": "train"' in line][:1]
        body = []
        for epoch, numbers in enumerate(vals, 1):
            fields = ", ".join(f'"{k}": {v}' for k, v in numbers.items())
            body += [*train, f'{{"mode": "val", "epoch": {epoch}, "iter": 625, "lr": 2e-05, {fields}}}']
    path = tmp_path / name
    path.write_text("\n".join([json.dumps(header), *body]) + "\n")
    return path


def det(box: str, rest: str = "0.6 0.5 0.4 0.6 0.4") -> dict:
    values = [box, *rest.split()]
    keys = ["bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP", "segm_mAP_50", "segm_mAP_75"]
    return dict(zip(keys, values))


def test_m3_logs_give_the_readme_numbers():
    coco, ade = parse(COCO), parse(ADE)
    m = metrics(coco)
    assert {k: m[k] for k in README_M3} == README_M3
    assert m["best_epoch"] == 9 and m["box_ap_final"] == 40.7  # 0.4066 at epoch 12
    assert metrics(ade)["miou"] == 40.6  # 0.4055: the float 40.55 formatted with .1f says 40.5
    assert f"{40.55:.1f}" == "40.5"
    assert (coco.task, coco.model, coco.gpus, coco.samples_per_gpu, coco.batch_size) == \
        ("detection", "repnext_m3", 8, 2, 16)
    assert (coco.lr, coco.weight_decay, coco.length, coco.seed) == (2e-4, 0.05, 12, 0)
    assert (ade.task, ade.model, ade.gpus, ade.samples_per_gpu, ade.batch_size) == \
        ("segmentation", "repnext_m3", 4, 4, 16)
    assert (ade.lr, ade.weight_decay, ade.length) == (1e-4, 0.05, 80000)
    # mmseg's val lines carry the validation loader's counters: the iterations come from the training lines
    assert [e["iter"] for e in ade.evaluations] == list(range(8000, 80001, 8000))
    assert metrics(ade)["best_iter"] == 80000 and metrics(ade)["macc"] == 51.8


def test_rounding_is_half_up_on_the_logged_text():
    assert percent(Decimal("0.4055")) == 40.6 and percent(Decimal("0.6345")) == 63.5
    assert percent(Decimal("0.4049")) == 40.5 and percent(Decimal("0.4")) == 40.0 and percent(0) == 0.0


def test_best_epoch_first_of_ties_and_other_models(tmp_path):
    # an M4-like run: the best bbox AP is reached twice (epochs 2 and 4); the first wins, the final is epoch 5's
    vals = [det("0.3"), det("0.4285", "0.6435 0.4715 0.3905 0.6165 0.4165"), det("0.41"),
            det("0.4285", "0.7 0.7 0.7 0.7 0.7"), det("0.4266")]
    path = synthesize(tmp_path, "repnext_m4_coco.json", COCO,
                      {"type='repnext_m3'": "type='repnext_m4'", "max_epochs=12": "max_epochs=5"}, vals)
    log = parse(path)
    assert log.model == "repnext_m4"
    assert metrics(log) == {"box_ap": 42.9, "box_ap50": 64.4, "box_ap75": 47.2, "mask_ap": 39.1, "mask_ap50": 61.7,
                            "mask_ap75": 41.7, "box_ap_final": 42.7, "best_epoch": 2}
    # M5's config: other widths, weight decay 0.1
    m5 = synthesize(tmp_path, "repnext_m5_coco.json", COCO,
                    {"type='repnext_m3'": "type='repnext_m5'", "weight_decay=0.05": "weight_decay=0.1"})
    assert (parse(m5).model, parse(m5).weight_decay) == ("repnext_m5", 0.1)


def test_config_text_is_read_not_executed():
    cfg = read_config("a = dict(x=[1, (2, 3)], y=-1)\nb = a\ngpu_ids = range(0, 4)\n", "cfg")
    assert cfg == {"a": {"x": [1, (2, 3)], "y": -1}, "b": {"x": [1, (2, 3)], "y": -1}, "gpu_ids": range(0, 4)}
    with pytest.raises(DenseLogError, match="unsupported expression"):
        read_config("a = __import__('os').getcwd()\n", "cfg")


@pytest.mark.parametrize("edit, match", [
    ({"max_epochs=12": "max_epochs=24"}, "last evaluation is at epoch 12 of 24"),
    ({"type='repnext_m3'": "type='resnet_x'"}, "backbone 'resnet_x' is not a timm model"),
    ({"gpu_ids = range(0, 8)": ""}, "no gpu_ids"),
])
def test_bad_logs_are_named(tmp_path, edit, match):
    with pytest.raises(DenseLogError, match=match):
        parse(synthesize(tmp_path, "x.json", COCO, edit))


def test_not_a_log(tmp_path):
    text = tmp_path / "notes.json"
    text.write_text("hello\n")
    with pytest.raises(DenseLogError, match="line 1: not JSON"):
        parse(text)
    text.write_text('{"mode": "val"}\n')
    with pytest.raises(DenseLogError, match="no 'config' text"):
        parse(text)
    with pytest.raises(DenseLogError, match="no such file"):
        parse(tmp_path / "missing.json")


def test_import_command_writes_the_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "repnext.results", "import", str(COCO), str(ADE), "--results",
                        str(tmp_path)], capture_output=True, text=True)  # repnext.results sends .json logs here
    assert r.returncode == 0, r.stderr
    assert "AP^b 40.8 62.4 44.7, AP^m 37.8 59.5 40.6 (epoch 9; final AP^b 40.7)" in r.stdout
    assert "mIoU 40.6 (iteration 80000)" in r.stdout
    (det_run,), (seg_run,) = (list((tmp_path / t).iterdir()) for t in ("detection", "segmentation"))
    record = read_json(det_run / "record.json")
    assert {k: record["metrics"][k] for k in README_M3} == README_M3
    assert (record["status"], record["source"], record["shown"], record["batch_size"]) == \
        ("complete", "imported", True, 16)
    assert read_json(det_run / "config.json")["config"]["batch_size"] is None  # the official batch: not in the id
    assert len((det_run / "log.txt").read_text().splitlines()) == 12
    seg = read_json(seg_run / "record.json")
    assert (seg["metrics"]["miou"], seg["iters"], seg["weight_decay"]) == (40.6, 80000, 0.05)
    assert len((seg_run / "log.txt").read_text().splitlines()) == 10


def test_imported_runs_are_the_tables_full_cells(tmp_path):
    """The table's full profile finds the imported runs where it looks for them: the same run ids."""
    for log, table in ((COCO, "detection"), (ADE, "segmentation")):
        _, record, _ = import_dense_log(log, tmp_path)
        cells = {r.run_id: r for r in load_spec(table).expand("full")}
        assert cells[record["run_id"]].config.model == "repnext_m3"
        assert (tmp_path / table / record["run_id"] / "record.json").is_file()


def test_four_gpu_rerun_is_stored_not_shown(tmp_path, capsys):
    rerun = synthesize(tmp_path, "repnext_m3_coco_4066.json", COCO, {"gpu_ids = range(0, 8)": "gpu_ids = range(0, 4)"})
    _, official, _ = import_dense_log(COCO, tmp_path / "results")
    _, record, _ = import_dense_log(rerun, tmp_path / "results")
    assert (record["batch_size"], record["shown"], official["shown"]) == (8, False, True)
    assert record["run_id"] != official["run_id"]  # its own cell: the README's run stays where the table looks
    assert main(["import", str(rerun), "--results", str(tmp_path / "results")]) == 0
    assert "batch 8: stored, not shown" in capsys.readouterr().out


def test_import_keeps_trained_runs_and_rejects_other_files(tmp_path, capsys):
    _, record, _ = import_dense_log(ADE, tmp_path)
    folder = tmp_path / "segmentation" / record["run_id"]
    trained = {"status": "complete", "source": "trained", "metrics": {"miou": 1.0}}
    (folder / "record.json").write_text(json.dumps(trained))
    assert main(["import", str(ADE), str(LOGS.parent / "repnext_m0_distill_300e.txt"), "--results",
                 str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "holds a trained run; pass --force" in err and "not a .json log" in err
    assert len(err.strip().splitlines()) == 2
    assert read_json(folder / "record.json") == trained
    assert main(["import", str(ADE), "--results", str(tmp_path), "--force"]) == 0
    assert read_json(folder / "record.json")["source"] == "imported"


def test_reimport_is_a_no_op_and_another_file_needs_force(tmp_path, capsys):
    assert main(["import", str(COCO), "--results", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would import detection/") and not any(tmp_path.iterdir())
    assert import_dense_log(COCO, tmp_path)[2] and not import_dense_log(COCO, tmp_path)[2]
    edited = tmp_path / "repnext_m3_coco.json"  # the same run's log with one number changed
    edited.write_text(COCO.read_text().replace('"bbox_mAP": 0.4082', '"bbox_mAP": 0.4182'))
    with pytest.raises(DenseLogError, match="different files of one run"):
        import_dense_log(edited, tmp_path)
    _, record, changed = import_dense_log(edited, tmp_path, force=True)
    assert changed and record["metrics"]["box_ap"] == 41.8
    assert main(["import", str(edited), "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("unchanged detection/repnext_m3-")
