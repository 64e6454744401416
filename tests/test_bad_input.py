"""Issue 16: every bad input and fault gets one line naming the value, a non-zero exit, no traceback, and
leaves the files as they were. The CLIs run in-process (``main(argv)``): an uncaught exception fails the test
as a traceback would; the runner's signal handling runs as a real subprocess."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repnext.cli import parse_train_arguments
from repnext.config import RunConfig
from repnext.lock import RunLock
from repnext.train import main as train_main

TINY = ("--data", "synthetic", "--epochs", "1", "--batch-size", "8", "--img-size", "32", "--no-progress")


def one_line(capsys, rc: int, expected_rc: int = 1) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == expected_rc, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def snapshot(folder: Path) -> dict:
    """The folder's files but the lock (kept: removing it would race with the next owner)."""
    files = folder.iterdir() if folder.exists() else ()
    return {p.name: p.read_bytes() for p in files if p.is_file() and p.name != ".lock"}


def train_cli(capsys, output: Path, *args: str, model: str = "repnext_m0") -> str:
    before = snapshot(output)
    line = one_line(capsys, train_main(["--model", model, *TINY, "--output", str(output), *args]))
    assert snapshot(output) == before  # nothing written, nothing lost
    assert not (output / "config.json").exists() or "config.json" in before
    return line


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A complete tiny run (1 epoch, 64 synthetic images: ~2 s)."""
    out = tmp_path_factory.mktemp("done") / "run"
    assert train_main(["--model", "repnext_m0", *TINY, "--output", str(out)]) == 0
    return out


# --- training CLI ---------------------------------------------------------------------------------------

def test_01_failed_start_claims_no_folder(tmp_path, capsys):
    out = tmp_path / "r"
    assert "'repnext_m9' is not a timm model" in train_cli(capsys, out, model="repnext_m9")
    assert train_main(["--model", "repnext_m0", *TINY, "--output", str(out)]) == 0  # the corrected run


@pytest.mark.parametrize("value", ["0", "-1"])
def test_02_epochs_must_be_positive(tmp_path, capsys, value):
    assert f"--epochs must be a positive integer, got {value}" in train_cli(capsys, tmp_path / "r", "--epochs", value)


@pytest.mark.parametrize("flag", ["--batch-size", "--img-size"])
def test_03_non_positive_sizes_are_refused(tmp_path, capsys, flag):
    assert f"{flag} must be a positive integer, got 0" in train_cli(capsys, tmp_path / "r", flag, "0")


def test_04_img_size_below_the_networks_stride(tmp_path, capsys):
    assert "--img-size 7 is below 32" in train_cli(capsys, tmp_path / "r", "--img-size", "7")


@pytest.mark.parametrize("device", ["tpu9", "cuda:99"])
def test_05_unknown_device(tmp_path, capsys, device):
    assert f"--device {device!r}" in train_cli(capsys, tmp_path / "r", "--device", device)


def test_06_location_fields_do_not_block_a_resume(done, tmp_path, capsys):
    assert train_main(["--model", "repnext_m0", *TINY, "--output", str(done), "--device", "cpu", "--workers", "0",
                       "--data-root", str(tmp_path), "--teacher-checkpoint", str(tmp_path / "t.pth")]) == 0
    assert "best top-1" in capsys.readouterr().out
    _, named = parse_train_arguments(["--model", "repnext_m0", "--data", "digits", "--output", str(tmp_path)])
    assert named.run_id == RunConfig(model="repnext_m0").run_id  # digits: the smoke profile's own


def test_07_empty_checkpoint(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pth").write_bytes(b"")
    assert "checkpoint.pth: is empty (0 bytes)" in train_cli(capsys, tmp_path / "r")


def test_08_foreign_checkpoints(done, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pth").write_bytes((done / "checkpoint.pth").read_bytes())
    assert "it is run repnext_m0-" in train_cli(capsys, other, model="repnext_m1")  # another model's
    ckpt = torch.load(done / "checkpoint.pth", weights_only=True)
    del ckpt["optimizer"]
    torch.save(ckpt, tmp_path / "no_opt.pth")
    (tmp_path / "no_opt.pth").replace(other / "checkpoint.pth")
    assert "not a training checkpoint of this engine (no optimizer)" in train_cli(capsys, other)
    (tmp_path / "dir" / "checkpoint.pth").mkdir(parents=True)
    assert "checkpoint.pth is a directory" in train_cli(capsys, tmp_path / "dir")


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a small tmpfs needs root")
def test_09_full_disk_names_the_file_and_the_cause(tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(small)], check=True)
    try:
        rc = train_main(["--model", "repnext_m0", *TINY, "--output", str(small / "r")])
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after timm's scheduler warning
        assert rc == 1 and f"cannot write {small / 'r' / 'checkpoint.pth'}: no space left on device" in err
        assert not list((small / "r").glob(".checkpoint.pth.*"))  # the partial temporary file is gone
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_10_invalid_config_json_is_named(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"run_id": "x\x01"}')
    assert "config.json is not valid JSON (Invalid control character" in train_cli(capsys, tmp_path / "r")


def test_11_a_second_process_on_one_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "os.write(fd, f'{os.getpid()} on host'.encode()); print(flush=True); time.sleep(60)",
                               str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        assert f"is in use by process {holder.pid} on host" in train_cli(capsys, out)
    finally:
        holder.kill()
        holder.wait()
    RunLock(out).acquire().release()  # the killed holder left no stuck lock


# --- loading weights -------------------------------------------------------------------------------------

def test_12_a_directory_as_weights_file(tmp_path):
    import timm

    from repnext.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is a directory, not a file"):
        timm.create_model("repnext_m0", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path)))


def test_13_nan_and_inf_tensors_are_named(tmp_path):
    import timm

    from repnext.checkpoint import CheckpointError

    state = timm.create_model("repnext_m0").state_dict()
    bad = sorted([next(iter(state)), [k for k in state if k.endswith("weight")][-1]])
    state[bad[0]].view(-1)[0], state[bad[1]].view(-1)[-1] = float("nan"), float("inf")
    torch.save({"model": state}, tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match=f"NaN or inf values in 2 tensor\\(s\\): {bad[0]}, {bad[1]}$"):
        timm.create_model("repnext_m0", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "diverged.pth")))


class Payload:
    def __reduce__(self):
        return (os.system, ("echo executed",))


def test_14_refusal_of_a_malicious_file_gives_no_weights_only_false_advice(tmp_path):
    from repnext.checkpoint import CheckpointError, read_checkpoint

    torch.save({"model": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(tmp_path / "evil.pth")
    line = str(refused.value)
    assert "\n" not in line and "unsupported GLOBAL posix.system" in line
    assert "weights_only=False" not in line and "will likely succeed" not in line


# --- runner ----------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "ablations" / "run.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_16_an_unparsable_record_is_named_and_the_table_renders(tmp_path, capsys):
    from ablations.run import main as run_main
    from ablations.spec import load_spec

    results, tables = tmp_path / "results", tmp_path / "tables"
    run = load_spec("downsample").expand("smoke")[0]
    bad = run.folder(results) / "record.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"status": "complete",')
    assert run_main(["--table", "downsample", "--render-only", "--results", str(results), "--tables-dir",
                     str(tables)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"warning: {bad} is not valid JSON (Expecting property name enclosed in double "
                                f"quotes: line 1 column 23 (char 22)); fix or delete it; run {run.run_id} counts "
                                "as not complete"]
    assert (tables / "downsample.md").is_file() and bad.read_text() == '{"status": "complete",'


@pytest.mark.slow
def test_17_sigint_to_the_runners_group_stops_its_jobs_with_a_checkpoint(tmp_path):
    """Ctrl-C in a terminal (SIGINT to the whole process group) while a local job trains: ~45 s."""
    run_id = "repnext_m0-70c2f4c42d"  # compact, smoke: RepNeXt-M0 for 3 epochs
    results = tmp_path / "results"
    folder = results / "compact" / run_id
    runner = subprocess.Popen([sys.executable, str(RUN_PY), "--table", "compact", "--only", run_id, "--results",
                               str(results), "--tables-dir", str(tmp_path / "tables"), "--no-progress"],
                              env=ENV, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (folder / "config.json").exists():  # the training has started
            assert runner.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        os.killpg(runner.pid, signal.SIGINT)
        _, err = runner.communicate(timeout=200)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines() == ["ablations/run.py: interrupted by SIGINT: stopped 1 running job(s), each "
                                        "checkpointed; run the same command again to resume"]
    assert torch.load(folder / "checkpoint.pth", weights_only=True)["run_id"] == run_id
    assert (folder / "run.ipynb").stat().st_size > 0 and not (folder / "record.json").exists()
    RunLock(folder).acquire().release()  # no training left running in the folder
    assert not (results / ".submitit").exists()


def test_18_a_finished_submission_folder_is_pruned_a_failed_one_kept(tmp_path):
    from ablations.runner import Outcome, prune_submission
    from ablations.spec import load_spec

    run = load_spec("downsample").expand("smoke")[0]
    first, second = tmp_path / ".submitit" / "a", tmp_path / ".submitit" / "b"
    for folder in (first, second):
        (folder / "logs").mkdir(parents=True)
    prune_submission(first, [Outcome(run, "failed", "boom")])
    prune_submission(second, [Outcome(run, "complete")])
    assert first.is_dir() and not second.exists()
    prune_submission(first, [Outcome(run, "complete")])
    assert not (tmp_path / ".submitit").exists()


# --- export and bench ------------------------------------------------------------------------------------

def test_19_export_output_file_and_img_size(tmp_path, capsys):
    from repnext.export import main as export_main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line(capsys, export_main(["--model", "repnext_m0", "--output", str(blocker)]), 2)
    assert line == f"error: --output {blocker} is a file; give a folder for the artifacts and records"
    line = one_line(capsys, export_main(["--model", "repnext_m0", "--output", str(tmp_path / "x"), "--img-size", "0"]),
                    2)
    assert "--img-size 0 is below 32" in line
    assert blocker.read_text() == "x" and not (tmp_path / "x").exists()


@pytest.mark.parametrize("device", ["cuda:99", pytest.param("cuda", marks=pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is here"))])
def test_20_bench_on_a_missing_gpu(tmp_path, capsys, device):
    from repnext.bench import main as bench_main

    line = one_line(capsys, bench_main(["--device", device, "--results", str(tmp_path)]), 2)
    assert f"--device {device!r}: this machine has " in line and not any(tmp_path.iterdir())
