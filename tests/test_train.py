"""The engine: losses, resume after SIGKILL and SIGTERM, divergence, bad input, DDP on the CPU (gloo, under
torchrun and under SLURM's variables), and the GPU paths' decisions that need no GPU."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import repnext.train as engine
from repnext.config import RunConfig
from repnext.data import build_dataset
from repnext.preflight import TRAINING_KEYS
from repnext.runtime import Dist, backend_for, first_host, launch_env, slurm_rendezvous
from repnext.store import load_checkpoint
from repnext.train import (
    DistillationLoss,
    Interrupted,
    TrainingError,
    TrainState,
    amp_dtype,
    build_loaders,
    build_scheduler,
    build_teacher,
    check_batch,
    device_for,
    evaluate,
    load_teacher,
    set_epoch_lr,
    train,
)

DATA = Path(__file__).parent / "data"
TINY = dict(embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1))
# 64 synthetic images, batch 8: 8 steps an epoch, a few seconds a run
SMALL = RunConfig(model="repnext_m0", data="synthetic", epochs=3, batch_size=8, img_size=32)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "repnext.train", *args, "--no-progress"]


SMALL_ARGS = ("--model", "repnext_m0", "--data", "synthetic", "--epochs", "3", "--batch-size", "8",
              "--img-size", "32")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    record = train(SMALL, out, progress=False)
    return out, record


def same_run(a: Path, record_a: dict, b: Path) -> None:
    assert (b / "log.txt").read_text() == (a / "log.txt").read_text()
    record_b = json.loads((b / "record.json").read_text())
    for key in ("best", "final", "fused", "params", "fused_params", "run_id"):
        assert record_b[key] == record_a[key], key


class FixedTeacher(nn.Module):
    def __init__(self, decisions: torch.Tensor, num_classes: int):
        super().__init__()
        self.logits = F.one_hot(decisions, num_classes).float() * 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_distillation_trains_both_heads_on_targets_and_teacher():
    torch.manual_seed(0)
    student = timm.create_model("repnext_m0", num_classes=5, distillation=True, **TINY).train()
    teacher = timm.create_model("repnext_m0", num_classes=5, **TINY).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = student(x)
    assert isinstance(out, tuple) and len(out) == 2
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher, alpha=0.5)(x, out, y)
    expected = 0.5 * F.cross_entropy(out[0], y) + 0.5 * F.cross_entropy(out[1], teacher(x).argmax(1))
    torch.testing.assert_close(loss, expected)
    # the distillation head is pulled toward whatever the teacher decides
    for decided in (torch.tensor([4, 4, 4, 4]), torch.tensor([0, 0, 1, 1])):
        fixed = FixedTeacher(decided, 5)
        got = DistillationLoss(nn.CrossEntropyLoss(), fixed, alpha=0.5)(x, out, y)
        torch.testing.assert_close(got, 0.5 * F.cross_entropy(out[0], y) + 0.5 * F.cross_entropy(out[1], decided))
    loss.backward()
    assert student.head.head_dist.linear.weight.grad.abs().sum() > 0


def test_without_distillation_the_averaged_head_trains():
    student = timm.create_model("repnext_m0", num_classes=5, **TINY).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = student(x)
    assert isinstance(out, torch.Tensor)
    feats = student.forward_head(student.forward_features(x), pre_logits=True)
    torch.testing.assert_close(out, (student.head.head(feats) + student.head.head_dist(feats)) / 2)
    DistillationLoss(nn.CrossEntropyLoss())(x, out, y).backward()
    assert student.head.head.linear.weight.grad.abs().sum() > 0
    assert student.head.head_dist.linear.weight.grad.abs().sum() > 0
    with pytest.raises(TrainingError, match="no teacher"):
        DistillationLoss(nn.CrossEntropyLoss())(x, (out, out), y)


@pytest.mark.parametrize("log,distillation", [("repnext_m0_without_distill_300e.txt", False),
                                               ("repnext_m0_distill_300e.txt", True)])
def test_lr_schedule_reproduces_the_official_logs(log, distillation):
    """Every epoch's train_lr of the official RepNeXt-M0 runs (300 epochs, batch 2048 / 1024)."""
    official = [json.loads(line)["train_lr"] for line in (DATA / log).read_text().splitlines()]
    s = RunConfig(model="repnext_m0", profile="full", distillation=distillation).resolve()
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=s.lr)
    scheduler = build_scheduler(optimizer, s.recipe)
    ours = [set_epoch_lr(scheduler, s.recipe, epoch) for epoch in range(s.recipe.epochs)]
    assert len(ours) == len(official) == 300
    for epoch, (a, b) in enumerate(zip(ours, official)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), epoch


def test_run_writes_the_store(uninterrupted):
    out, record = uninterrupted
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert list(lines[0]) == ["train_lr", "train_loss", "test_loss", "test_acc1", "test_acc5", "epoch",
                              "n_parameters"]
    assert record["status"] == "complete"
    assert record["fused"]["acc1"] == record["final"]["acc1"]  # the inference form scores the same
    assert abs(record["fused"]["loss"] - record["final"]["loss"]) < 1e-4
    assert record["best"]["acc1"] == max(line["test_acc1"] for line in lines)
    assert record["params"] == lines[0]["n_parameters"] > record["fused_params"]
    assert record["environment"]["torch"] == torch.__version__
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["step"]) == (3, 0)
    config = json.loads((out / "config.json").read_text())
    assert config["run_id"] == SMALL.run_id and config["resolved"]["batch_size"] == 8


def test_train_state_round_trips_through_a_weights_only_checkpoint(uninterrupted, tmp_path):
    state = TrainState(epoch=2, step=3, partial=[1.25, 3.0, 24.0], history=[{"epoch": 0, "train_loss": 1.5}],
                       best={"acc1": 50.0, "acc5": 100.0, "epoch": 1}, train_time=4.5, train_samples=128)
    torch.save(state.state_dict(), tmp_path / "state.pth")
    loaded = TrainState()
    loaded.load_state_dict(torch.load(tmp_path / "state.pth", weights_only=True))
    assert loaded == state and loaded != TrainState()
    saved = state.state_dict()
    state.history.append({"epoch": 1})  # the loop goes on: what was saved stays as it was
    assert saved["history"] == [{"epoch": 0, "train_loss": 1.5}]
    with pytest.raises(KeyError, match="train_samples"):
        TrainState().load_state_dict({k: v for k, v in saved.items() if k != "train_samples"})

    # a run's checkpoint: the state's keys (those preflight asks for) beside the weights'
    out, record = uninterrupted
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert set(ckpt) == set(TrainState().state_dict()) | {"model", "optimizer", "ema", "scaler", "run_id"}
    assert set(TRAINING_KEYS) <= set(ckpt)
    resumed = TrainState()
    resumed.load_state_dict(ckpt)
    assert (resumed.epoch, resumed.step, resumed.partial) == (3, 0, [0.0, 0, 0])
    assert resumed.history == [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert resumed.best == record["best"] and resumed.train_time == record["train_time_s"] > 0
    assert resumed.train_samples == 3 * 64


def test_a_finished_run_is_not_redone(uninterrupted):
    out, record = uninterrupted
    before = (out / "checkpoint.pth").stat().st_mtime_ns
    assert train(SMALL, out, progress=False) == record
    assert (out / "checkpoint.pth").stat().st_mtime_ns == before


def test_should_stop_checkpoints_mid_epoch_and_resumes_exactly(uninterrupted, tmp_path):
    calls = iter(range(100))
    with pytest.raises(Interrupted, match="epoch 1, step 3"):
        train(SMALL, tmp_path, progress=False, should_stop=lambda: next(calls) == 10)  # 8 + 3 steps
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 3)
    assert not (tmp_path / "record.json").exists()
    train(SMALL, tmp_path, progress=False)
    same_run(*uninterrupted, tmp_path)


def _wait_for_epoch(out: Path, proc: subprocess.Popen, epochs: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = out / "log.txt"
        if log.is_file() and len(log.read_text().splitlines()) >= epochs:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run did not reach the epoch in time")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGUSR2])
def test_killed_run_resumes_to_the_same_result(uninterrupted, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(*SMALL_ARGS, "--output", str(out)), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(out, proc, 1)
    time.sleep(0.6)  # into the second epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # checkpoint and exit, the code saying which signal
        assert proc.returncode == 128 + sig, err
        assert f"interrupted by {sig.name}" in err
        ckpt = load_checkpoint(out / "checkpoint.pth")
        assert ckpt["step"] > 0, "the checkpoint was not taken mid-epoch"
    assert not (out / "record.json").exists()
    done = subprocess.run(cli(*SMALL_ARGS, "--output", str(out)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    same_run(*uninterrupted, out)


def test_diverging_loss_stops_with_a_failed_record(tmp_path):
    config = RunConfig(model="repnext_m0", recipe="starnet", data="synthetic", epochs=3, batch_size=8, img_size=32,
                       lr=1e30)
    with pytest.raises(TrainingError, match=r"loss is (nan|inf).*diverged"):
        train(config, tmp_path, progress=False)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "failed" and "diverged" in record["error"]


def test_bad_input_is_one_line_and_touches_nothing(tmp_path):
    missing = subprocess.run(cli("--model", "repnext_m0", "--profile", "full", "--data", "imagenet",
                                 "--data-root", str(tmp_path / "nope"), "--output", str(tmp_path / "a")),
                             env=ENV, capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0
    assert "has no train/ folder" in missing.stderr and "ImageFolder" in missing.stderr

    no_root = subprocess.run(cli("--model", "repnext_m0", "--data", "cifar100", "--output", str(tmp_path / "b")),
                             env=ENV, capture_output=True, text=True)
    assert no_root.returncode == 1 and "needs --data-root" in no_root.stderr

    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad_out = subprocess.run(cli(*SMALL_ARGS, "--output", str(blocker / "run")), env=ENV, capture_output=True,
                             text=True)
    assert bad_out.returncode == 1 and "cannot create output folder" in bad_out.stderr

    other = tmp_path / "other"
    train(RunConfig(model="repnext_m0", data="synthetic", epochs=1, batch_size=8, img_size=32), other,
          progress=False)
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    clash = subprocess.run(cli(*SMALL_ARGS, "--output", str(other)), env=ENV, capture_output=True, text=True)
    assert clash.returncode == 1 and "holds another run" in clash.stderr
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pth").write_bytes(b"garbage")
    bad_ckpt = subprocess.run(cli(*SMALL_ARGS, "--output", str(corrupt)), env=ENV, capture_output=True, text=True)
    assert bad_ckpt.returncode == 1 and "cannot resume from" in bad_ckpt.stderr
    assert (corrupt / "checkpoint.pth").read_bytes() == b"garbage"

    teacher = subprocess.run(cli("--model", "repnext_m0", "--profile", "full", "--distillation", "--data",
                                 "synthetic", "--output", str(tmp_path / "c")), env=ENV, capture_output=True,
                             text=True)
    assert teacher.returncode == 1 and "--teacher-checkpoint" in teacher.stderr


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    worker = Path(__file__).parent / "ddp_worker.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", str(worker), str(out), str(dump)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0, p1 = (torch.load(dump / f"params_rank{r}.pth", weights_only=True) for r in (0, 1))
    assert p0.keys() == p1.keys()
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    w0, w1 = (json.loads((dump / f"writes_rank{r}.json").read_text()) for r in (0, 1))
    assert w1 == []
    assert {"log.txt", "checkpoint.pth", "record.json", "config.json"} <= set(w0)
    record = json.loads((out / "record.json").read_text())
    assert record["environment"]["world_size"] == 2
    assert len((out / "log.txt").read_text().splitlines()) == 2


@pytest.mark.slow
def test_distilled_smoke_run_trains_its_own_teacher_once_for_its_table(tmp_path):
    config = RunConfig(model="repnext_m0", data="synthetic", epochs=1, batch_size=8, img_size=32, distillation=True)
    record = train(config, tmp_path / "m0", progress=False)
    assert record["distillation"] and record["status"] == "complete"
    (folder,) = (tmp_path / ".teachers").iterdir()  # beside the run: the table's distilled runs share it
    teacher = json.loads((folder / "record.json").read_text())
    assert teacher["model"] == "resnet10t" and teacher["status"] == "complete"
    stamp = (folder / "checkpoint.pth").stat().st_mtime_ns
    other = train(dataclasses.replace(config, model="repnext_m0e"), tmp_path / "m0e", progress=False)
    assert other["status"] == "complete" and (folder / "checkpoint.pth").stat().st_mtime_ns == stamp  # not retrained


@pytest.mark.slow
def test_smoke_run_learns_real_digits(tmp_path):
    """The smoke profile on scikit-learn's handwritten digits (held-out split) with the repvit recipe."""
    record = train(RunConfig(model="repnext_m0", recipe="repvit", profile="smoke", data="digits"), tmp_path,
                   progress=False)
    assert record["best"]["acc1"] >= 80.0  # 3 epochs at batch 64: 83.6 % here (10 epochs at batch 32: 94.4 %)
    assert record["fused"]["acc1"] == record["final"]["acc1"]


# --- ranks, devices, batch: the decisions of a GPU job, checked without one ---------------------------------

TORCHRUN = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
SRUN = {"SLURM_PROCID": "11", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "3",
        "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}


def test_each_rank_finds_itself_from_torchrun_or_slurm():
    assert launch_env(TORCHRUN) == Dist(5, 8, 1)
    assert launch_env({**SRUN, **TORCHRUN}) == Dist(5, 8, 1)  # torchrun (or submitit's export) first
    assert launch_env(SRUN) == Dist(11, 16, 3)  # a plain `srun -n 16`: not 16 world-1 runs
    batch_script = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert launch_env(batch_script) == Dist()  # the batch script itself (one process) is no rank of a group
    assert launch_env({}) == Dist()
    assert [first_host(n) for n in ("gpu[07-08]", "gpu[03-05,7],cpu1", "a1,b2", "node9")] == \
        ["gpu07", "gpu03", "a1", "node9"]
    assert slurm_rendezvous(SRUN) == ("gpu07", str(20000 + 123456 % 20000))


def test_each_rank_runs_on_its_own_gpu():
    assert device_for("auto", launch_env(TORCHRUN), cuda_devices=8) == "cuda:1"
    assert device_for("cuda", launch_env(SRUN), cuda_devices=8) == "cuda:3"  # SLURM_LOCALID
    assert device_for("auto", launch_env(SRUN), cuda_devices=1) == "cuda:0"  # SLURM bound one GPU per task
    assert device_for("cuda:2", Dist(), cuda_devices=8) == "cuda:2"  # one process: the GPU asked for
    assert device_for("auto", launch_env(TORCHRUN), cuda_devices=0) == "cpu"
    assert device_for("cpu", launch_env(TORCHRUN), cuda_devices=8) == "cpu"
    with pytest.raises(TrainingError, match=r"--device cuda:2 with 8 processes.*cuda:LOCAL_RANK.*--device cuda"):
        device_for("cuda:2", launch_env(TORCHRUN), cuda_devices=8)
    with pytest.raises(TrainingError, match="CUDA is not available"):
        device_for("cuda", Dist(), cuda_devices=0)


def test_amp_dtype_follows_the_compute_capability():
    assert amp_dtype("bfloat16", (7, 0)) == "float16"  # V100: bf16 is emulated; fp16 + GradScaler
    assert amp_dtype("bfloat16", (7, 5)) == "float16"
    assert amp_dtype("bfloat16", (8, 0)) == "bfloat16"  # A100 and later
    assert amp_dtype("bfloat16", (9, 0)) == "bfloat16"
    assert amp_dtype("float16", (9, 0)) == "float16"
    assert amp_dtype("none", (9, 0)) == "none"
    assert amp_dtype("bfloat16", None) == "none"  # the CPU trains in float32


def test_backend_serves_host_and_device_tensors():
    assert backend_for(torch.device("cuda", 3)) == "cpu:gloo,cuda:nccl"
    assert backend_for(torch.device("cpu")) == "gloo"


def test_batch_must_split_evenly_over_the_ranks():
    assert check_batch(2048, 8, mixup=True) == 256
    assert check_batch(1024, 16, mixup=True) == 64
    assert check_batch(63, 7, mixup=False) == 9
    with pytest.raises(TrainingError, match=r"--batch-size 2048 .* 24 processes .* nearest valid: 2016 or 2064"):
        check_batch(2048, 24, mixup=True)  # 85 per GPU: mixup's pairs would fail at step 1
    with pytest.raises(TrainingError, match=r"--batch-size 64 .* 3 processes .* nearest valid: 60 or 66"):
        check_batch(64, 3, mixup=True)
    with pytest.raises(TrainingError, match=r"nearest valid: 8$"):
        check_batch(4, 8, mixup=False)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_batch_that_does_not_split_stops_every_rank_before_anything_is_written(tmp_path, rank):
    """As each rank of ``torchrun --nproc_per_node 3`` sees it (the check runs before the process group)."""
    env = {**ENV, "WORLD_SIZE": "3", "RANK": rank, "LOCAL_RANK": rank}
    proc = subprocess.run(cli("--model", "repnext_m0", "--profile", "smoke", "--data", "digits", "--batch-size",
                              "64", "--output", str(tmp_path / "X")), env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    if rank == "0":  # one line, from rank 0 only
        assert proc.stderr.strip().count("\n") == 0 and "64" in proc.stderr and "3 processes" in proc.stderr
    else:
        assert proc.stderr == ""
    assert not (tmp_path / "X").exists()


def test_workers_get_the_epoch_without_the_dataset_changing(uninterrupted, tmp_path):
    """Persistent loader workers keep their copy of the dataset: the epoch that seeds augmentation must come
    with each index. Same log with two persistent workers as in the main process."""
    config = dataclasses.replace(SMALL, workers=2)
    train(config, tmp_path, progress=False)
    same_run(*uninterrupted, tmp_path)


# --- the distillation teacher ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_teacher_scores_what_it_scored_when_trained(tmp_path, monkeypatch):
    """The teacher a distilled run uses carries every trained weight, its 4-class classifier included."""
    teacher_cfg = RunConfig(model="resnet10t", data="synthetic", epochs=1, batch_size=8, img_size=32)
    trained = train(teacher_cfg, tmp_path / "teacher", progress=False)
    checkpoint = tmp_path / "teacher" / "checkpoint.pth"
    student = RunConfig(model="repnext_m0", data="synthetic", epochs=1, batch_size=8, img_size=32,
                        distillation=True, teacher_checkpoint=str(checkpoint))
    used = []

    def build_and_keep(*args, **kwargs):
        used.append(build_teacher(*args, **kwargs))
        return used[-1]

    monkeypatch.setattr(engine, "build_teacher", build_and_keep)
    train(student, tmp_path / "student", progress=False)
    (teacher,) = used
    assert torch.equal(teacher.fc.weight, load_checkpoint(checkpoint)["model"]["fc.weight"])
    s = student.resolve()
    splits = build_dataset(s.data, None, s.img_size)
    _, val = build_loaders(s, splits, Dist(), teacher)
    scored = evaluate(teacher, val, torch.device("cpu"), Dist(), channels_last=True)
    assert scored["acc1"] == trained["final"]["acc1"]
    assert scored["loss"] == pytest.approx(trained["final"]["loss"], rel=1e-5)
    with pytest.raises(TrainingError, match=r"cannot load teacher resnet10t \(10 classes\).*fc.weight \(4, 512\)"):
        load_teacher("resnet10t", checkpoint, 10)  # strictly: no silent fresh head


# --- DDP on the CPU: agreement, resume, failure ---------------------------------------------------------------

WORKER = Path(__file__).parent / "ddp_worker.py"


def torchrun(out: Path, dump: Path, mode: str, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(WORKER), str(out), str(dump), mode],
                          env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ddp_resume_is_exact_train_loss_included(tmp_path):
    """Stopped mid-epoch at rank 1's request only, the two ranks agree, checkpoint the global partial sums and
    resume to the uninterrupted log (train_loss included)."""
    proc = torchrun(tmp_path / "run", tmp_path, "resume", 29541)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "resume_rank0.json").read_text())
    assert "epoch 1, step 2" in result["stopped"]
    assert result["log_b"] == result["log_a"] and result["same_final"]


@pytest.mark.slow
def test_ddp_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    proc = torchrun(tmp_path / "run", tmp_path, "nan", 29543)
    assert proc.returncode != 0
    errors = [json.loads((tmp_path / f"error_rank{r}.json").read_text()) for r in (0, 1)]
    assert errors[0] == errors[1] and "loss is nan at epoch 0, step 2 on rank 1" in errors[0]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "failed" and (record["epoch"], record["step"], record["rank"]) == (0, 2, 1)


@pytest.mark.slow
def test_srun_without_torchrun_forms_one_job_and_a_lost_rank_fails_it(tmp_path):
    """Two plain processes with only SLURM's variables (``srun -n 2 python ...``) form one DDP job; when
    rank 1 dies, rank 0 does not hang: it writes a failed record naming the lost rank and exits non-zero."""
    base = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                         "MASTER_PORT")}
    base.update(SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4817")
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "run"), str(tmp_path), "die"],
                              env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    t0 = time.monotonic()
    outs = [p.communicate(timeout=300) for p in procs]
    assert time.monotonic() - t0 < 240
    assert procs[1].returncode == 3 and procs[0].returncode == 1, outs[0][1][-3000:]
    assert "lost rank 1" in json.loads((tmp_path / "error_rank0.json").read_text())
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "failed" and "lost rank 1" in record["error"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run_id"]  # written once, by rank 0 of the one job
