"""The latency table: repnext.latency (models timed side by side), the spec, the runner's one job, the rendered
table and Figure 1."""
import dataclasses
import statistics
import sys

import pytest
import timm
import torch

from ablations.figures import FIGURES, latency_accuracy, latency_accuracy_frame
from ablations.records import METRICS
from ablations.run import main
from ablations.runner import job_tasks
from ablations.spec import load_spec
from repnext.bench import fused_form, gpu_throughput, largest_batch
from repnext.config import RunConfig
from repnext.latency import cpu_forms, measure_side_by_side, run_cell
from repnext.reference import paper_value
from repnext.schema import parse_record
from repnext.store import read_json

from .records import write_real_record

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def spec():
    return load_spec("latency")


@pytest.fixture(scope="module")
def m0_record(tmp_path_factory):
    output = tmp_path_factory.mktemp("latency") / "m0"
    record = run_cell({"model": "repnext_m0", "profile": "smoke"}, output, rounds=2, latency_iters=1,
                      backbone_models=None, gpu_warmup_s=0.2, gpu_time_s=0.5, gpu_max_batch=64)
    return output, record


def test_run_cell_writes_a_complete_record_with_every_field(m0_record):
    output, record = m0_record
    assert read_json(output / "record.json") == record  # what it returns is what the store holds
    config = RunConfig(model="repnext_m0", profile="smoke")
    assert (record["status"], record["model"], record["run_id"], record["profile"]) == (
        "complete", "repnext_m0", config.run_id, "smoke")
    cpu = record["cpu"]
    assert set(cpu["forms"]) == {"train", "full", "single_branch"} and cpu["fused_form"] == "full"
    assert (cpu["img_size"], cpu["latency_batch"], cpu["throughput_batch"], cpu["dtype"], cpu["channels_last"],
            cpu["threads"], cpu["rounds"], cpu["latency_iters"]) == (224, 1, 16, "float32", True,
                                                                    torch.get_num_threads(), 2, 1)
    assert cpu["device"].endswith("(CPU)")
    for form, v in cpu["forms"].items():
        assert 0 < v["latency_ms_min"] <= v["latency_ms"] < 10_000, form
        assert 0 < v["throughput_img_s"] <= v["throughput_img_s_max"], form
    # the table's throughput column: the fused form's, in repnext.bench.throughput's schema
    assert record["throughput"]["images_per_second"] == cpu["forms"]["full"]["throughput_img_s"]
    assert {k: record["throughput"][k] for k in ("form", "batch", "img_size", "channels_last", "threads")} == {
        "form": "full", "batch": 16, "img_size": 224, "channels_last": True, "threads": torch.get_num_threads()}
    env = record["environment"]
    assert (env["torch"], env["timm"], env["threads"]) == (torch.__version__, timm.__version__,
                                                           torch.get_num_threads())
    if CUDA:
        assert record["gpu"]["batch"] == 64 and record["gpu"]["images_per_second"] > 0
    else:
        assert record["gpu"] is None and "no CUDA device" in record["gpu_missing"]
    backbone = record["backbone"]  # backbone_models=None: every model gets the 512x512 backbone latency
    features = timm.create_model("repnext_m0", features_only=True).feature_info
    assert (backbone["img_size"], backbone["batch"], backbone["channels"], backbone["reductions"]) == (
        512, 1, features.channels(), [4, 8, 16, 32])
    assert backbone["latency_ms"] > 0 and record["backbone_missing"] is None
    assert record["coreml"] is None and "off" in record["coreml_missing"]
    # the table's metrics read the record (typed: the schema accepts it)
    typed = parse_record(record)
    assert METRICS["latency_ms"].value(typed) == cpu["forms"]["full"]["latency_ms"]
    assert METRICS["latency_single_branch_ms"].value(typed) == cpu["forms"]["single_branch"]["latency_ms"]
    assert METRICS["latency_train_ms"].value(typed) == cpu["forms"]["train"]["latency_ms"]
    assert METRICS["backbone_latency_ms"].value(typed) == backbone["latency_ms"]
    assert METRICS["gpu_throughput_img_s"].value(typed) == (record["gpu"]["images_per_second"] if CUDA else None)
    # timed alone: nothing to pair with
    assert record["side_by_side"] == [config.run_id] and cpu["measured_with"] == []
    assert cpu["paired_speedup"] == {"latency": {}, "throughput": {}} and backbone["paired_speedup"] == {}


def test_models_are_timed_side_by_side_and_keep_their_paired_ratios(tmp_path):
    names = ["repnext_m0", "repvit_m0_6", "convnext_femto"]
    runs = [{"config": {"model": n, "profile": "smoke"}, "output": str(tmp_path / n)} for n in names]
    records = measure_side_by_side(runs, rounds=3, latency_iters=1, throughput_batch=2, img_size=64,
                                   backbone_img_size=64, backbone_models=names[:2])
    ids = [RunConfig(model=n, profile="smoke").run_id for n in names]
    for name, record in zip(names, records):
        assert read_json(tmp_path / name / "record.json") == record and record["model"] == name
        assert record["side_by_side"] == ids and record["cpu"]["measured_with"] == [n for n in names if n != name]
        for form in record["cpu"]["forms"].values():  # every form, every round: any ratio can be recomputed
            assert len(form["latency_round_s"]) == len(form["throughput_round_s"]) == 3
    cpu = {r["model"]: r["cpu"] for r in records}
    for task in ("latency", "throughput"):
        timings = {n: c["forms"][c["fused_form"]][f"{task}_round_s"] for n, c in cpu.items()}
        for a in names:
            for b in (n for n in names if n != a):
                ratio = cpu[a]["paired_speedup"][task][b]
                assert ratio == statistics.median(tb / ta for ta, tb in zip(timings[a], timings[b]))
                # the median of an odd number of same-round ratios: a over b is exactly 1 / (b over a)
                assert ratio * cpu[b]["paired_speedup"][task][a] == pytest.approx(1)
    backbones = {r["model"]: r["backbone"] for r in records}
    assert backbones["convnext_femto"] is None and set(backbones["repnext_m0"]["paired_speedup"]) == {"repvit_m0_6"}


def test_side_by_side_refuses_a_model_twice_or_two_profiles(tmp_path):
    for second in ({"model": "repnext_m0", "profile": "smoke"}, {"model": "repvit_m0_6", "profile": "full"}):
        runs = [{"config": {"model": "repnext_m0", "profile": "smoke"}, "output": str(tmp_path / "a")},
                {"config": second, "output": str(tmp_path / "b")}]
        with pytest.raises(ValueError, match="distinct models of one profile"):
            measure_side_by_side(runs)
    assert not list(tmp_path.iterdir())


def test_the_runner_gives_an_exclusive_table_one_job(spec, tmp_path):
    runs = spec.expand("smoke")
    assert spec.exclusive and not load_spec("downsample").exclusive
    [(group, task)] = job_tasks(spec, runs, tmp_path)
    assert group == runs and task.parameters["side_by_side"] == [
        {"config": dataclasses.asdict(r.config), "output": str(r.folder(tmp_path))} for r in runs]
    assert task.executed == str(runs[0].folder(tmp_path) / "run.ipynb")
    downsample = load_spec("downsample").expand("smoke")
    assert [g for g, _ in job_tasks(load_spec("downsample"), downsample, tmp_path)] == [[r] for r in downsample]


def test_an_exclusive_table_is_timed_again_whole_when_a_run_is_missing(spec, tmp_path, capsys):
    results = tmp_path / "results"
    runs = spec.expand("smoke")
    for run in runs[1:]:
        write_real_record(run.folder(results), "latency", model=run.config.model)
    argv = ["--table", "latency", "--cluster", "local", "--profile", "smoke", "--results", str(results), "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "latency: 13 runs, 12 complete, 13 to run" in out
    assert sum(line.strip().startswith("todo") for line in out.splitlines()) == 13


def test_baselines_have_train_and_fused_forms_only(tmp_path):
    assert cpu_forms("repnext_m3") == ("train", "full", "single_branch") and fused_form("repnext_m3") == "full"
    assert cpu_forms("repvit_m1_1") == ("train", "fused") and fused_form("repvit_m1_1") == "fused"
    assert cpu_forms("convnext_femto") == ("train",) and fused_form("convnext_femto") == "train"  # nothing to fuse
    record = run_cell({"model": "repvit_m0_6", "profile": "smoke"}, tmp_path, rounds=1, latency_iters=1,
                      backbone_models=["repnext_m3"])
    assert set(record["cpu"]["forms"]) == {"train", "fused"} and record["throughput"]["form"] == "fused"
    assert record["backbone"] is None and "not a detection/segmentation backbone" in record["backbone_missing"]
    assert METRICS["latency_single_branch_ms"].value(parse_record(record)) is None  # rendered as "—"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="checks the Linux record (no Core ML prediction)")
def test_coreml_facts_of_the_fused_model(tmp_path):
    record = run_cell({"model": "repnext_m0", "profile": "full"}, tmp_path, rounds=1, latency_iters=1, coreml=True,
                      backbone_models=[])
    cm = record["coreml"]
    assert cm["ops"] > 100 and cm["op_histogram"]["conv"] > 40
    assert cm["size_bytes"] > 1e6 and (tmp_path / "coreml" / "repnext_m0_224.mlpackage").is_dir()
    assert cm["latency_ms"] is None and "macOS" in cm["latency_missing"] and record["coreml_missing"] is None


def test_largest_power_of_two_batch_that_fits():
    calls = []

    def fits_below(limit):
        def fits(batch):
            calls.append(batch)
            return batch <= limit
        return fits

    assert largest_batch(fits_below(300), cap=16384) == 256
    assert calls == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]  # doubling up, stopping at the first that does not fit
    assert largest_batch(fits_below(300), cap=100) == 64
    assert largest_batch(fits_below(10**9), cap=2048) == 2048
    assert largest_batch(fits_below(0), cap=2048) is None


def test_parameters_are_resolved_for_the_profile_when_the_spec_expands(spec):
    smoke, full = spec.expand("smoke")[0].parameters, spec.expand("full")[0].parameters
    assert (smoke["rounds"], smoke["latency_iters"], smoke["coreml"], smoke["gpu_time_s"]) == (2, 2, False, 2.0)
    assert (full["rounds"], full["latency_iters"], full["coreml"], full["gpu_time_s"]) == (20, 10, True, 10.0)
    assert smoke["throughput_batch"] == full["throughput_batch"] == 16 and "fuse_mode" not in smoke


def test_the_cell_of_a_side_by_side_job_returns_its_own_record(tmp_path):
    names = ["repnext_m0", "repvit_m0_6"]
    runs = [{"config": {"model": n, "profile": "smoke"}, "output": str(tmp_path / n)} for n in names]
    kwargs = dict(side_by_side=runs, rounds=1, latency_iters=1, throughput_batch=2, img_size=64, backbone_models=[])
    with pytest.raises(ValueError, match="none of the side_by_side runs' folders"):
        run_cell(runs[0]["config"], tmp_path / "elsewhere", **kwargs)
    assert not list(tmp_path.iterdir())  # refused before timing anything
    record = run_cell(runs[1]["config"], tmp_path / "repvit_m0_6", **kwargs)
    assert record["model"] == "repvit_m0_6" and read_json(tmp_path / "repnext_m0" / "record.json")["model"] == (
        "repnext_m0")


def test_gpu_throughput_method_without_a_gpu(monkeypatch):
    """The papers' loop (batch search, warm-up, synchronised timing) with CUDA's calls stubbed, on the CPU."""
    import repnext.bench as bench

    class Small(torch.nn.Module):  # "runs out of memory" above batch 8
        def forward(self, x):
            if x.shape[0] > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return x.mean((2, 3))

    built = []
    monkeypatch.setattr(bench, "build_form", lambda *a, **k: built.append((a, k)) or Small())
    for fn in ("synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, fn, lambda *a: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stub GPU")
    r = gpu_throughput("repnext_m0", img_size=16, warmup_s=0.01, time_s=0.02, max_batch=1024, device="cpu")
    assert built[0][0][:2] == ("repnext_m0", "official") and built[0][1] == {"channels_last": False}
    assert (r["batch"], r["device"]) == (8, "Stub GPU")
    assert r["larger_batch"] == "batch 16: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert r["iterations"] >= 1 and r["images_per_second"] > 0 and r["dtype"] == "float32"


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_throughput_the_papers_way():
    r = gpu_throughput("repnext_m0", warmup_s=0.2, time_s=0.5, max_batch=256)
    assert (r["batch"], r["form"], r["dtype"], r["channels_last"]) == (256, "official", "float32", False)
    assert r["images_per_second"] > 0 and r["iterations"] >= 1 and r["device"] == torch.cuda.get_device_name()


def test_spec_rows_and_their_paper_values(spec):
    runs = spec.expand("smoke")
    models = [r.config.model for r in runs]
    assert models[:6] == [f"repnext_m{i}" for i in range(6)] and "repvit_m1_5" in models and len(models) == 13
    assert spec.figures == ("latency_accuracy",) and "latency_accuracy" in FIGURES
    assert paper_value("imagenet", "repnext_m4", "latency_ms").text == "1.48"
    assert [paper_value("detection", f"repnext_m{i}", "latency_ms_512").value for i in (3, 4, 5)] == [5.1, 6.6, 10.4]
    assert paper_value("imagenet_starnet", "repnext_m0e", "latency_ms").text == "0.62"  # the single-branch column
    assert {c.metric: c.reference_table for c in spec.columns}["backbone_latency_ms"] == ["detection", "repvit"]
    assert paper_value("repvit", "repvit_m1_5", "latency_ms_512").value == 6.4  # the RepViT paper's backbones
    assert spec.parameters["coreml"] == {"smoke": False, "full": True}


def test_figure_on_an_empty_store_draws_the_papers_points(spec, tmp_path):
    runs = spec.expand("smoke")
    frame = latency_accuracy_frame(spec, runs, tmp_path / "results", "smoke")
    assert set(frame["panel"]) == {"paper"}
    repnext = frame[frame["family"] == "RepNeXt"]
    assert list(repnext["model"]) == [f"RepNeXt-M{i}" for i in range(6)]
    assert list(repnext["latency_ms"]) == [0.59, 0.86, 1.00, 1.11, 1.48, 2.20]
    assert list(repnext["top1"]) == [74.2, 78.8, 80.1, 80.7, 82.3, 83.3]  # the distilled top-1
    repvit = frame[frame["family"] == "RepViT"].set_index("model")  # from the RepViT paper
    assert repvit.loc["RepViT-M1.0", ["latency_ms", "top1"]].tolist() == [1.0, 80.0]
    paths = latency_accuracy(spec, runs, tmp_path / "results", "smoke", tmp_path / "out")
    assert [p.name for p in paths] == ["latency_accuracy.png", "latency_accuracy.pdf"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_figure_takes_our_top1_from_the_imagenet_table_only_when_trained_on_imagenet(spec, tmp_path):
    results = tmp_path / "results"
    cpu = {"fused_form": "full", "forms": {"full": {"latency_ms": 12.5}}, "device": "Test CPU (CPU)", "threads": 1}
    for profile in ("smoke", "full"):
        for run in spec.expand(profile, only="repnext_m0") + spec.expand(profile, only="repvit_m0_9"):
            write_real_record(run.folder(results), "latency", model=run.config.model, cpu=cpu)
        for run in load_spec("imagenet").expand(profile, only="repnext_m0"):
            acc = 71.0 if run.paper["distillation"] else 69.0
            write_real_record(run.folder(results), "classification", best={"acc1": acc})
    for profile, top1, accuracy in (("smoke", 74.2, "paper's top-1 (distilled)"), ("full", 71.0, "our top-1 (full)")):
        frame = latency_accuracy_frame(spec, spec.expand(profile), results, profile)
        ours = frame[frame["panel"] == "ours"].set_index("model")
        assert ours.loc["RepNeXt-M0", ["latency_ms", "top1", "accuracy"]].tolist() == [12.5, top1, accuracy]
        # a baseline takes the RepViT paper's top-1 (distilled, 300 epochs) beside our latency
        assert ours.loc["RepViT-M0.9", ["latency_ms", "top1"]].tolist() == [12.5, 78.7]
    assert len(latency_accuracy(spec, spec.expand("full"), results, "full", tmp_path / "out")) == 2


@pytest.mark.slow
def test_latency_table_renders_through_the_runner(tmp_path):
    out = tmp_path / "tables"
    argv = ["--table", "latency", "--cluster", "local", "--profile", "smoke", "--only", "repnext_m[01]",
            "--results", str(tmp_path / "results"), "--tables-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    run, m1 = load_spec("latency").expand("smoke", only="repnext_m[01]")
    record = read_json(run.folder(tmp_path / "results") / "record.json")
    assert record["status"] == "complete" and (run.folder(tmp_path / "results") / "run.ipynb").is_file()
    # one job timed both, side by side: its notebook sits in the first run's folder only, and both records
    # name both runs and pair them (the runner prunes .submitit/ after a run without failures)
    assert not (m1.folder(tmp_path / "results") / "run.ipynb").exists()
    m1_record = read_json(m1.folder(tmp_path / "results") / "record.json")
    assert record["side_by_side"] == m1_record["side_by_side"] == [run.run_id, m1.run_id]
    assert set(record["cpu"]["paired_speedup"]["latency"]) == {"repnext_m1"}
    md = (out / "latency.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| Rep") or line.startswith("| Conv")}
    header = [c.strip() for c in md.splitlines()[2].split("|")[2:-1]]
    m0 = dict(zip(header, rows["RepNeXt-M0"]))
    cpu = record["cpu"]["forms"]
    assert (m0["Latency, fused (ms) paper"], m0["Latency, fused (ms) ours"]) == (
        "0.59", f"{cpu['full']['latency_ms']:.2f}")
    # timings on other hardware than the paper's get no delta column at all
    assert not [h for h in header if h.startswith("Latency") and h.endswith("Δ")]
    assert (m0["Latency, single-branch (ms) paper"], m0["Latency, single-branch (ms) ours"]) == (
        "0.62", f"{cpu['single_branch']['latency_ms']:.2f}")
    assert m0["CPU throughput, fused (img/s) ours"] == f"{cpu['full']['throughput_img_s']:.0f}"
    assert m0["Backbone 512x512 (ms) ours"] == "—"  # M0 is no detection backbone in the papers
    m1_cpu = m1_record["cpu"]["forms"]["full"]
    assert dict(zip(header, rows["RepNeXt-M1"]))["Latency, fused (ms) ours"] == f"{m1_cpu['latency_ms']:.2f}"
    m3 = dict(zip(header, rows["RepNeXt-M3"]))
    assert (m3["Backbone 512x512 (ms) paper"], m3["Latency, fused (ms) ours"]) == ("5.1", "—")  # not run yet
    m15 = dict(zip(header, rows["RepViT-M1.5"]))  # a baseline: the RepViT paper's values (Tables 1 and 2)
    assert (m15["Latency, fused (ms) paper"], m15["GPU throughput (img/s) paper"]) == ("1.5", "2151")
    assert dict(zip(header, rows["ConvNeXt-femto"]))["Latency, fused (ms) paper"] == "—"  # reported nowhere
    assert "(CPU), batch 16, full form, channels_last" in md
    assert (out / "latency.tex").read_text().count("RepNeXt-M0") == 1
    assert all((out / f"latency_accuracy.{ext}").stat().st_size > 10_000 for ext in ("png", "pdf"))
