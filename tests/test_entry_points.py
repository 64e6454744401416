"""The console scripts of pyproject.toml: each names a callable of this project; installed (``pip install -e .``),
they answer ``--help`` and name a bad argument in one line, as ``python -m`` does."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from repnext.results import cli

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
BIN = Path(sys.executable).parent


def test_every_documented_command_has_a_script():
    assert sorted(SCRIPTS) == sorted(f"repnext-{n}" for n in (
        "run", "train", "bench", "models", "results", "validate", "export", "dense-convert"))


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_names_a_callable_of_the_project(name):
    module, function = SCRIPTS[name].split(":")
    assert module.split(".")[0] in ("repnext", "ablations")
    assert callable(getattr(importlib.import_module(module), function))


def installed(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN}: `pip install -e .` creates it")
    return path


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # this tree's code, whichever is installed
    return subprocess.run([str(installed(name)), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("name,usage", [("repnext-run", "usage: ablations/run.py"),
                                        ("repnext-results", "usage: python -m repnext.results")])
def test_installed_scripts_answer_help(name, usage):
    out = run_script(name, "--help")
    assert out.returncode == 0 and out.stdout.startswith(usage)


def test_an_installed_script_names_a_bad_argument_in_one_line():
    out = run_script("repnext-run", "--table", "nope")
    assert out.returncode == 2
    assert out.stderr.startswith("ablations/run.py: error: unknown table 'nope'; expected one of: ")
    assert "Traceback" not in out.stderr


def test_results_sends_json_logs_to_the_dense_import(tmp_path, capsys):
    for name in ("run.json", "log.txt"):
        (tmp_path / name).write_text("{}\n")
        assert cli(["import", "--dry-run", "--results", str(tmp_path / "results"), str(tmp_path / name)]) == 1
    dense, classification = capsys.readouterr().err.splitlines()
    assert "expected an mmdet/mmseg JSON log" in dense and "expected a DeiT log.txt" in classification
