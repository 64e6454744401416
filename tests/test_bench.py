"""The speed benchmark: its ratios, its report and its record (figures are printed, never asserted)."""
import pytest
import torch

from repnext.bench import Case, main, online_reparam_gain, render, speedup
from repnext.store import read_json


def case(form: str, seconds: list[float], model: str = "repnext_m1", task: str = "throughput") -> Case:
    return Case(model, form, task, 1 if task == "latency" else 16, True, seconds)


def test_speedup_pairs_the_rounds_so_a_machine_slowing_down_cancels():
    # the machine halves its speed in the second half; the case is always 1.25x faster than the reference
    ref = case("fused", [1.0, 1.0, 1.0, 2.0, 2.0, 2.0], model="repvit_m1_0")
    fast = case("full", [0.8, 0.8, 0.8, 1.6, 1.6, 1.6])
    assert speedup(fast, ref) == pytest.approx(1.25)
    assert speedup(ref, ref) == 1.0
    with pytest.raises(ValueError):  # rounds that do not pair are a bug, not a ratio
        speedup(case("full", [0.8]), ref)


def test_the_report_ranks_forms_and_states_the_online_reparameterization_gain():
    cases = [
        case("train", [0.5, 0.6], task="train"),
        case("branchwise", [1.0, 0.9], task="train"),
        case("train", [0.4, 0.4], model="repvit_m1_0", task="train"),
        case("full", [0.02, 0.02], task="latency"),
        case("fused", [0.03, 0.03], model="repvit_m1_0", task="latency"),
    ]
    report = render(cases)
    assert "ratio = speedup over repvit_m1_0 train/cl" in report
    latency = report[report.index("latency"):report.index("train (")].splitlines()
    assert latency[2].startswith("repnext_m1") and latency[2].endswith("1.50x")  # fastest first
    assert online_reparam_gain(cases) == [
        "", "repnext_m1 training step, train/cl against the branch-by-branch reference: 1.75x branchwise/cl"]


def test_a_small_run_prints_every_form_and_stores_the_cases(tmp_path, capsys):
    assert main(["--models", "repnext_m0", "--refs", "repvit_m0_9", "--img-size", "32", "--batch", "2",
                 "--rounds", "2", "--iters", "1", "--threads", "1", "--memory-format", "channels_last",
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("train/cl", "branchwise/cl", "official/cl", "full/cl", "full_noinplace/cl", "single_branch/cl",
                  "fused/cl"):
        assert label in out
    assert "repnext_m0 training step, train/cl against the branch-by-branch reference" in out
    (record_path,) = tmp_path.glob("bench/*/record.json")
    record = read_json(record_path)
    assert record["status"] == "complete" and record["environment"]["torch"] == torch.__version__
    forms = {(c["model"], c["form"], c["task"]) for c in record["cases"]}
    assert ("repnext_m0", "full_noinplace", "throughput") in forms and ("repvit_m0_9", "fused", "latency") in forms
    assert all(len(c["seconds"]) == 2 and c["value"] > 0 for c in record["cases"])


def test_bad_arguments_are_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--paper-throughput", "--device", "cpu", "--no-save"])
    assert exit_info.value.code == 2
    assert "--paper-throughput measures a CUDA GPU; --device is 'cpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--models", "repnext_m9", "--no-save"])
    assert "unknown model 'repnext_m9'" in capsys.readouterr().err
