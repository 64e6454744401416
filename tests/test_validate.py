"""``python -m repnext.validate``: a checkpoint's top-1/top-5 in the training and the fused form."""
import argparse

import pytest
import timm
import torch

from repnext.config import RunConfig
from repnext.train import train
from repnext.validate import main, release_file, validate

TINY_RUN = RunConfig(model="repnext_m0", data="synthetic", epochs=1, batch_size=8, img_size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny smoke training run: its folder and record."""
    out = tmp_path_factory.mktemp("run")
    return out, train(TINY_RUN, out, progress=False)


def test_a_run_checkpoint_gives_the_same_top1_unfused_and_fused(trained):
    out, record = trained
    result = validate("repnext_m0", out / "checkpoint.pth", "synthetic", img_size=32, batch_size=8)
    assert result["images"] == 32  # the synthetic validation split
    assert result["unfused"]["acc1"] == result["fused"]["acc1"]
    assert result["unfused"]["acc5"] == result["fused"]["acc5"]
    # the same evaluation as the training's (same crop, same images): the same top-1
    assert result["unfused"]["acc1"] == pytest.approx(record["best"]["acc1"])
    assert 0 < result["max_logit_diff"] < 1e-4


def test_the_cli_prints_both_forms(trained, capsys):
    out, _ = trained
    assert main(["--model", "repnext_m0", "--checkpoint", str(out / "checkpoint.pth"), "--data", "synthetic",
                 "--img-size", "32", "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "training form  top-1" in text and "fused form     top-1" in text
    assert "largest logit difference" in text and "crop_pct 0.875" in text


def test_an_official_release_container_loads(tmp_path):
    """A ``{'model': ..., 'args': Namespace}`` file, as the *_distill_300e.pth releases, with 1000 classes."""
    torch.manual_seed(0)
    model = timm.create_model("repnext_m0").eval()
    path = tmp_path / "repnext_m0_distill_300e.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="repnext_m0")}, path)
    result = validate("repnext_m0", path, "synthetic", img_size=32, batch_size=16, recipe="starnet")
    assert result["crop_pct"] == 0.9
    assert result["unfused"]["acc1"] == result["fused"]["acc1"]
    assert result["max_logit_diff"] < 1e-4


def test_release_files_come_from_the_pretrained_cfgs():
    assert release_file("repnext_m1", "repvit", True) == "repnext_m1_distill_300e.pth"
    assert release_file("repnext_m2", "starnet", False) == "repnext_m2_sz224_4xbs512_ep300.pth.tar"
    assert release_file("repnext_m0", "starnet", True) == "repnext_m0_sz224_4xbs256_ep300_distill.pth.tar"
    assert release_file("repnext_m3", "starnet", True) is None  # the StarNet recipe released M0-M2 only
    assert release_file("repnext_m0", "repvit", False) is None


@pytest.mark.parametrize("args, message", [
    (["--model", "repnext_m9"], "unknown model 'repnext_m9'"),
    (["--model", "repnext_m0", "--checkpoint", "/nonexistent.pth"], "/nonexistent.pth does not exist"),
    (["--model", "repnext_m0", "--data", "mnist"], "unknown dataset 'mnist'"),
    (["--model", "repnext_m0", "--recipe", "deit"], "unknown recipe 'deit'"),
])
def test_bad_input_is_one_line(trained, capsys, args, message):
    out, _ = trained
    argv = ["--checkpoint", str(out / "checkpoint.pth"), "--data", "synthetic", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
