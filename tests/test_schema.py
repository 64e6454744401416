"""Typed records (``repnext.schema``): every kind the code writes parses, bad records are one-line errors, and
the tables read from typed records are the ones the dict-reading render made."""
import json
import shutil
from pathlib import Path

import pytest

from ablations.records import METRICS, complete_record
from ablations.render import provenance, table_frame, to_latex, to_markdown
from ablations.spec import load_spec
from repnext import schema
from repnext.dense.official_logs import import_dense_log
from repnext.results import main as import_logs
from repnext.schema import RecordError, parse_record
from repnext.store import read_record, write_record

RECORDS = Path(__file__).parent / "data" / "records"  # real smoke records, as the cells wrote them
LOGS = Path(__file__).parent / "data" / "official_logs"
TABLES = ("imagenet", "equivalence", "latency", "released", "gradcam", "detection", "segmentation")


def real(folder: str) -> dict:
    return json.loads((RECORDS / folder / "record.json").read_text())


@pytest.mark.parametrize("folder, payload", [
    ("imagenet/repnext_m0-222ecf7cdb", schema.Classification),
    ("equivalence/repnext_m0-bb47474ded", schema.Equivalence),
    ("latency/repnext_m0-bb47474ded", schema.Latency), ("latency/convnext_femto-5abd51c4cc", schema.Latency),
    ("released/repnext_m0-222ecf7cdb", schema.Released), ("gradcam/repnext_m0-bb47474ded", schema.Gradcam),
    ("detection/repnext_m3-5249c2ed23", schema.Detection), ("segmentation/repnext_m3-5249c2ed23", schema.Segmentation),
    ("failed/repnext_m0-89f87f1587", schema.Failed),
])
def test_every_kind_the_cells_write_parses(folder, payload):
    obj = real(folder)
    record = read_record(RECORDS / folder / "record.json")
    assert isinstance(record.payload, payload) and record.kind == payload.__name__.lower()
    assert (record.status, record.run_id) == (obj["status"], obj["run_id"]) == (record.status, folder.split("/")[1])
    if payload is schema.Failed:
        assert (record.payload.error, record.payload.step, record.complete) == (obj["error"], 1, False)
        return
    assert (record.model, record.profile, record.source) == (obj["model"], "smoke", obj["source"])
    assert record.environment.host == obj["environment"]["host"] and record.environment.threads == 1


def test_typed_fields_hold_the_json_numbers():
    c = parse_record(real("imagenet/repnext_m0-222ecf7cdb")).payload
    assert (c.best.acc1, c.best.epoch, c.paper_settings["cifar100"].num_classes) == (69.08077988053431, 1, 100)
    lat = parse_record(real("latency/repnext_m0-bb47474ded")).payload
    assert lat.cpu.fused_form == "full" and set(lat.cpu.forms) == {"train", "full", "single_branch"}
    assert len(lat.cpu.forms["full"].latency_round_s) == lat.cpu.rounds
    cam = parse_record(real("gradcam/repnext_m0-bb47474ded")).payload
    assert cam.cam["gradcam++"].trained.mass_on_digit + cam.cam["gradcam++"].trained.mass_on_background == 1.0
    det = parse_record(real("detection/repnext_m3-5249c2ed23")).payload
    assert det.metrics.best_epoch == 5 and isinstance(det.metrics.box_ap, float)


def test_metrics_read_their_kind_and_nothing_from_another():
    latency = parse_record(real("latency/repnext_m0-bb47474ded"))
    forms = latency.payload.cpu.forms
    assert METRICS["latency_ms"].value(latency) == forms["full"].latency_ms
    assert METRICS["latency_train_ms"].value(latency) == forms["train"].latency_ms
    femto = parse_record(real("latency/convnext_femto-5abd51c4cc"))
    assert METRICS["latency_single_branch_ms"].value(femto) is None  # a timm model has no such form
    assert METRICS["backbone_latency_ms"].value(femto) is None  # not a backbone of the papers
    released = parse_record(real("released/repnext_m0-222ecf7cdb"))
    trained = parse_record(real("imagenet/repnext_m0-222ecf7cdb"))
    assert METRICS["released_top1"].value(released) == trained.payload.final.acc1  # its checkpoint, evaluated
    assert METRICS["released_top1"].value(trained) is None and METRICS["top1"].value(released) is None


def test_imported_official_logs_parse_as_their_kind(tmp_path):
    files = [LOGS / "repnext_m0_distill_300e.txt", LOGS / "repnext_m0_sz224_4xbs512_ep300_summary.csv"]
    assert import_logs(["import", *map(str, files), "--results", str(tmp_path)]) == 0
    for name in ("repnext_m3_coco.json", "repnext_m3_ade20k.json"):
        import_dense_log(LOGS / "dense" / name, tmp_path)
    records = {p.parent.parent.name + "/" + p.parent.name: read_record(p) for p in tmp_path.glob("*/*/record.json")}
    kinds = sorted((r.kind, Path(r.source_file).name) for r in records.values())
    assert kinds == [("classification", "repnext_m0_distill_300e.txt"),
                     ("classification", "repnext_m0_sz224_4xbs512_ep300_summary.csv"),
                     ("detection", "repnext_m3_coco.json"), ("segmentation", "repnext_m3_ade20k.json")]
    assert all(r.imported and r.environment is None and len(r.source_sha256) == 64 for r in records.values())
    m0 = next(r for r in records.values() if r.source_file.endswith("distill_300e.txt"))
    assert m0.payload.fused is None and m0.payload.train_images_per_second is None  # a log has neither


@pytest.mark.parametrize("change, message", [
    (lambda r: r["best"].pop("acc1"), "field best.acc1 is missing (a classification record)"),
    (lambda r: r.update(epochs="3"), "field epochs is '3' (str); a classification record's is int"),
    (lambda r: r.update(distillation=1), "field distillation is 1 (int); a classification record's is bool"),
    (lambda r: r.update(num_classes=True), "field num_classes is True (bool); a classification record's is int"),
    (lambda r: r["paper_settings"]["imagenet"].update(macs=None), "field paper_settings.imagenet.macs is None"),
    (lambda r: r.pop("model"), "field model is missing"),
    (lambda r: r.update(status="done"), "status is 'done'; a classification record's is 'complete'"),
    (lambda r: r.update(source="made up"), "source is 'made up', not one of trained, measured, imported"),
    (lambda r: r.update(kind="imagenet"), "kind 'imagenet' is not one of classification, equivalence"),
    (lambda r: r.update(kind=["latency"]), "kind ['latency'] is not one of classification, equivalence"),
    (lambda r: r.pop("best"), "cannot tell the record's kind"),
    (lambda r: r.update(kind="latency"), "field cpu is missing (a latency record)"),  # the kind named wins
])
def test_a_bad_record_is_one_line_naming_the_file_and_the_field(change, message, tmp_path):
    record = real("imagenet/repnext_m0-222ecf7cdb")
    change(record)
    path = tmp_path / "record.json"
    with pytest.raises(RecordError) as e:
        write_record(path, record)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)
    assert not path.exists()  # validated before anything is written


def test_an_explicit_kind_is_the_kind():
    record = parse_record({**real("imagenet/repnext_m0-222ecf7cdb"), "kind": "classification"})
    assert record.kind == "classification" and record.payload.best.epoch == 1


def test_write_record_keeps_a_valid_record_byte_for_byte(tmp_path):
    source = RECORDS / "gradcam" / "repnext_m0-bb47474ded" / "record.json"
    write_record(tmp_path / "record.json", json.loads(source.read_text()))
    assert (tmp_path / "record.json").read_bytes() == source.read_bytes()


def test_a_record_off_the_schema_counts_as_not_complete_and_is_named_once(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(RECORDS, results, ignore=shutil.ignore_patterns("tables"))
    bad = results / "imagenet" / "repnext_m0-222ecf7cdb" / "record.json"
    record = json.loads(bad.read_text())
    del record["best"]["acc5"]
    bad.write_text(json.dumps(record))
    spec = load_spec("imagenet")
    run = next(r for r in spec.expand("smoke") if r.run_id == "repnext_m0-222ecf7cdb")
    assert complete_record(run, results) is None
    frame = table_frame(spec, spec.expand("smoke"), results)  # the table goes on without it
    assert frame.loc["RepNeXt-M0"][("Top-1 distill (%)", "ours")] == "—"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {bad}: field best.acc5 is missing (a classification record); "
                   "run repnext_m0-222ecf7cdb counts as not complete"]


@pytest.mark.parametrize("table", TABLES)
def test_tables_from_typed_records_are_those_the_dict_reading_render_made(table):
    """``tables/``: rendered from these records by the render before records were typed (byte for byte)."""
    spec = load_spec(table)
    runs = spec.expand("smoke")
    frame, notes = table_frame(spec, runs, RECORDS), provenance(spec, runs, RECORDS, "smoke")
    assert to_markdown(spec, frame, notes) == (RECORDS / "tables" / f"{table}.md").read_text()
    assert to_latex(spec, frame, notes) == (RECORDS / "tables" / f"{table}.tex").read_text()
    assert "ours" in (RECORDS / "tables" / f"{table}.md").read_text()
