"""One atomic write for every file the project writes (text, checkpoints, figures), and one-line messages."""
import os
import stat

import pytest
import torch

from repnext.config import RunConfig
from repnext.files import atomic_write, atomic_write_text
from repnext.messages import first_line
from repnext.store import RunPaths, load_checkpoint, save_checkpoint
from repnext.train import train


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_run_paths_name_each_file_of_the_run_folder(tmp_path):
    paths = RunPaths(tmp_path / "run")
    files = {"config": "config.json", "log": "log.txt", "record": "record.json", "checkpoint": "checkpoint.pth",
             "notebook": "run.ipynb", "stop": "stop.request"}
    assert {name: getattr(paths, name) for name in files} == {n: tmp_path / "run" / f for n, f in files.items()}
    assert paths == RunPaths(tmp_path / "run") and repr(paths) == f"RunPaths(root={tmp_path / 'run'!r})"


def test_atomic_files_get_the_mode_of_any_new_file(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this umask
    text = atomic_write_text(tmp_path / "a" / "record.json", "{}\n")
    ckpt = save_checkpoint(tmp_path / "a" / "checkpoint.pth", {"w": torch.arange(3)})
    assert mode(text) == mode(ckpt) == mode(plain) == 0o666 & ~umask  # not mkstemp's 0600
    assert text.read_text() == "{}\n" and load_checkpoint(ckpt)["w"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint.pth", "record.json"]  # no temp left


def test_a_run_folder_has_one_mode(tmp_path, umask):
    """The engine's files: the checkpoint is no longer 0600 beside a 0644 record."""
    out = tmp_path / "run"
    train(RunConfig(model="repnext_m0", data="synthetic", epochs=1, batch_size=8, img_size=32), out, progress=False)
    modes = {p.name: mode(p) for p in out.iterdir()}
    assert {"record.json", "log.txt", "config.json", "checkpoint.pth"} <= set(modes)
    assert modes["checkpoint.pth"] == modes["record.json"] == modes["log.txt"] == 0o666 & ~umask, modes


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "record.json", "old\n")

    def half_then_fail(f):
        f.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


@pytest.mark.parametrize(("error", "line"), [
    (RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"), "CUDA out of memory."),
    (ValueError("\n  \n  second line first\nthird"), "second line first"),
    (IndexError(), "IndexError"),  # an empty message: the type, not an IndexError of our own
    (KeyError(""), "''"),
])
def test_first_line_of_an_error(error, line):
    assert first_line(error) == line
