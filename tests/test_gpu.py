"""Checks that need a CUDA device; they skip cleanly without one."""
import pytest
import timm
import torch

from repnext.bench import main as bench
from repnext.config import RunConfig
from repnext.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_amp_channels_last_training_run(tmp_path):
    config = RunConfig(model="repnext_m1", data="synthetic", img_size=224, epochs=1, batch_size=32, device="cuda")
    record = train(config, tmp_path, progress=False)
    assert record["status"] == "complete" and record["environment"]["gpu"]
    assert record["fused"]["acc1"] == pytest.approx(record["final"]["acc1"], abs=1.0)  # bf16 rounding


def test_fused_equals_unfused_on_gpu():
    model = timm.create_model("repnext_m1").cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        assert (model.fuse()(x) - model(x)).abs().max().item() < 1e-3  # TF32 convolutions


def test_bench_with_amp_and_the_papers_throughput(tmp_path, capsys):
    assert bench(["--models", "repnext_m0", "--refs", "repvit_m0_9", "--device", "cuda", "--amp", "bfloat16",
                 "--img-size", "64", "--rounds", "2", "--paper-throughput", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GPU throughput the papers' way" in out and "full/cl" in out
