"""Checks that need a CUDA device; they skip cleanly without one (``benchmarks/gpu_check.sh`` runs them)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from repnext.bench import main as bench
from repnext.config import RunConfig
from repnext.train import DistillationLoss, _autocast, amp_dtype, train, train_step

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


@pytest.mark.parametrize("amp", ["bfloat16", "float16"])
def test_training_step_in_amp_channels_last_on_cuda0(amp):
    """repnext_m1 at 224 px as the full profile trains it; float16 with the GradScaler (what a GPU below sm80
    gets instead of bfloat16)."""
    torch.manual_seed(0)
    device = torch.device("cuda:0")
    model = timm.create_model("repnext_m1").to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if amp == "float16" else None
    recipe = RunConfig(model="repnext_m1", profile="full").resolve().recipe
    x = torch.randn(32, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (32,), device=device)
    with torch.no_grad(), _autocast(device, amp):
        assert model(x).dtype == getattr(torch, amp)
    before = [p.detach().clone() for p in model.parameters()]
    losses = [train_step(model, model, DistillationLoss(nn.CrossEntropyLoss()), optimizer, scaler, recipe, x, y,
                         amp).item() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > len(before) // 2
    if scaler is not None:
        assert scaler.get_scale() > 0
    major, minor = torch.cuda.get_device_capability(device)
    assert amp_dtype("bfloat16", (major, minor)) == ("bfloat16" if major >= 8 else "float16")


def test_collectives_on_an_nccl_group_through_torchrun(tmp_path):
    """World size 1 through torchrun: host values reduce through gloo, CUDA tensors (DDP, BatchNorm) through
    NCCL, on the rank's own GPU."""
    worker = Path(__file__).parent / "ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                           "29561", str(worker), str(tmp_path / "run"), str(tmp_path), "collectives"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "collectives.json").read_text())
    assert result["device"] == "cuda:0" and result["backend"] == "cpu:gloo,cuda:nccl"
    assert result["host_sum"] == [1.0, 2.5] and result["device_sum"] == [1.0, 1.0, 1.0]
    assert result["agree"] == [True, True, None]
    assert torch.isfinite(torch.tensor(result["loss"]))


def test_distilled_run_with_its_teacher_on_cuda(tmp_path):
    config = RunConfig(model="repnext_m1", data="synthetic", img_size=64, epochs=1, batch_size=16, distillation=True,
                       device="cuda")
    record = train(config, tmp_path / "m1", progress=False)
    assert record["status"] == "complete" and record["distillation"]
    assert record["environment"]["device"] == "cuda:0"
    teacher = json.loads(next((tmp_path / ".teachers").iterdir()).joinpath("record.json").read_text())
    assert teacher["status"] == "complete" and teacher["environment"]["device"] == "cuda:0"


def test_a_tables_throughput_is_measured_on_the_jobs_gpu(tmp_path):
    from repnext.experiment import run_cell

    config = {"model": "repnext_m0", "data": "synthetic", "epochs": 1, "batch_size": 16, "img_size": 32}
    record = run_cell(config, tmp_path / "run", num_classes=10, img_size=64, throughput_batch=16)
    assert record["throughput"]["device"] == torch.cuda.get_device_name(0)
