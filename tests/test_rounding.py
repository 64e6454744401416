"""Printed values round as the paper rounds: half-up from the decimal text (issue 13 part 4)."""
import math

import pytest

from ablations.render import table_frame
from ablations.spec import load_spec
from repnext.reference import PaperValue, round_half_up

from .records import write_real_record


@pytest.mark.parametrize("value, decimals, text", [
    (0.4055 * 100, 1, "40.6"),   # f"{x:.1f}" gives 40.5
    (0.6345 * 100, 1, "63.5"),   # 63.449999999999996: f"{x:.1f}" gives 63.4
    (74.245, 2, "74.25"),        # f"{x:.2f}" gives 74.24
    (3544.5, 0, "3545"),         # f"{x:.0f}" gives 3544 (half to even)
    (2.675, 2, "2.68"),          # f"{x:.2f}" gives 2.67
    (74.21000030517578, 2, "74.21"),
    (72.5649, 2, "72.56"),
    (-0.45, 1, "-0.5"),          # ties away from zero
    (-0.04, 1, "0.0"),           # no negative zero
    (1e-7, 2, "0.00"),
    (5.0, 3, "5.000"),
])
def test_round_half_up(value, decimals, text):
    assert round_half_up(value, decimals) == text


def test_signed_and_non_finite():
    assert [round_half_up(x, 1, sign=True) for x in (0.05, -0.05, 0.0, -0.04)] == ["+0.1", "-0.1", "+0.0", "+0.0"]
    assert round_half_up(math.nan, 1) == "nan" and round_half_up(math.inf, 1, sign=True) == "+inf"


def test_paper_value_formats_and_deltas_half_up():
    paper = PaperValue("imagenet", "repnext_m0", "top1", "72.6", "test")
    assert (paper.format(72.55), paper.format_delta(72.55)) == ("72.6", "+0.0")
    assert (paper.format(72.45), paper.format_delta(72.45)) == ("72.5", "-0.1")
    assert paper.matches(72.55) and not paper.matches(72.549)
    assert paper.format_delta(63.45) == "-9.1"  # 63.5 - 72.6, exact in decimal


def test_tables_print_values_and_deltas_half_up(tmp_path):
    spec = load_spec("downsample")
    run = next(r for r in spec.expand("full") if r.config.model == "convnext_femto_ds_a")
    setting = {"fused_params": 5_252_728, "macs": 785_000_000, "train_params": 5_252_728}
    speed = {"images_per_second": 3544.5, "form": "fused", "batch": 16, "img_size": 224, "channels_last": True,
             "threads": 1, "device": "test CPU"}
    write_real_record(run.folder(tmp_path), "classification", model=run.config.model, data="imagenet",
                      best={"acc1": 74.245, "acc5": 90.0}, paper_setting=setting, paper_settings=None, throughput=speed)
    row = table_frame(spec, [run], tmp_path).loc[spec.label(run)]
    # f-strings would print 74.24 and -0.04, 3544
    assert (row[("Top-1 (%)", "ours")], row[("Top-1 (%)", "Δ")]) == ("74.25", "-0.03")
    assert (row[("GMACs", "ours")], row[("GMACs", "Δ")]) == ("0.79", "+0.00")
    assert row[("Throughput (img/s)", "ours")] == "3545"
