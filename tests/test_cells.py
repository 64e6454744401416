"""One contract for table cells (repnext.cells): every spec's notebook calls its cell the same way, with the
spec's parameters resolved for the profile when it expands, and the fuse mode declared once."""
import ast
import importlib
import json

import papermill
import pytest

from ablations import NOTEBOOKS
from ablations.spec import RUNNER_PARAMETERS, SpecError, available_tables, load_spec, notebook_parameters
from repnext.cells import cell_parameters
from repnext.profiles import PROFILES
from repnext.reference import TABLE_FUSE_MODE, table_fuse_mode

SPECS = {name: load_spec(name) for name in available_tables()}
CELL_NOTEBOOKS = sorted({spec.notebook for spec in SPECS.values()})


def call_cell_source(notebook: str) -> str:
    code = [c for c in json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    return "".join(code[1]["source"])  # the cell after the parameters cell


def cell_of(notebook: str):
    """The notebook's cell function (``from <module> import run_cell``) and its one call."""
    tree = ast.parse(call_cell_source(notebook))
    [module] = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and any(a.name == "run_cell" for a in n.names)]
    [call] = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run_cell"]
    return importlib.import_module(module).run_cell, call


@pytest.mark.parametrize("notebook", CELL_NOTEBOOKS)
def test_every_notebook_calls_its_cell_the_one_way(notebook):
    cell, call = cell_of(notebook)
    keywords = cell_parameters(cell)  # the contract: (config, output, *, keyword-only ...) -> dict
    names = set(notebook_parameters(NOTEBOOKS / f"{notebook}.ipynb"))
    assert names == set(papermill.inspect_notebook(str(NOTEBOOKS / f"{notebook}.ipynb")))  # papermill reads each
    assert {"config", "output", "paper"} <= names  # what the runner passes every run
    assert names - {"config", "output", "paper"} <= set(keywords), f"{notebook}: parameters its cell does not take"
    assert [a.id for a in call.args] == ["config", "output"]
    passed = {k.arg: k.value.id for k in call.keywords}
    assert passed == {n: n for n in names & set(keywords)}  # every parameter of the cell, by its own name


@pytest.mark.parametrize("table", sorted(SPECS))
def test_runs_get_plain_values_the_notebook_takes(table):
    spec = SPECS[table]
    names = set(notebook_parameters(spec.notebook_path))
    if spec.exclusive:
        assert "side_by_side" in names

    def plain(value) -> bool:
        return not isinstance(value, dict) or (not (value and set(value) <= set(PROFILES))
                                               and all(plain(v) for v in value.values()))

    for profile in PROFILES:
        for run in spec.expand(profile):
            assert set(run.parameters) <= names - set(RUNNER_PARAMETERS)
            assert all(plain(v) for v in run.parameters.values()), run.parameters


def test_the_fuse_mode_is_the_reference_tables():
    counted = {name: spec for name, spec in SPECS.items() if "fuse_mode" in notebook_parameters(spec.notebook_path)}
    assert sorted(counted) == ["compact", "downsample", "imagenet", "imagenet_starnet", "srp"]
    for name, spec in counted.items():
        assert "fuse_mode" not in spec.parameters
        modes = {run.parameters["fuse_mode"] for p in PROFILES for run in spec.expand(p)}
        assert modes == {"full" if name == "compact" else "official"} == {table_fuse_mode(spec.reference)}
    assert table_fuse_mode("compact_imagenet") == TABLE_FUSE_MODE["compact_imagenet"] == "full"
    assert table_fuse_mode("imagenet") == "official"


def test_per_profile_values_resolve_at_any_depth():
    detection = SPECS["detection"]
    assert detection.parameters["backbone_run"]["distillation"] == {"smoke": False, "full": True}
    for profile, distillation in (("smoke", False), ("full", True)):
        [run] = detection.expand(profile)[:1]
        assert run.parameters["backbone_run"] == {"recipe": "repvit", "data": "imagenet", "epochs": 300,
                                                  "distillation": distillation}
        assert run.parameters["backbone_checkpoints"] == {} and run.parameters["task"] == "detection"
    gradcam = {p: SPECS["gradcam"].expand(p)[0].parameters for p in PROFILES}
    assert (gradcam["smoke"]["images"], gradcam["smoke"]["n_images"]) == ("digits", 100)
    assert (gradcam["full"]["images"], gradcam["full"]["n_images"]) == ("samples", 10)


def spec_file(tmp_path, parameters: str):
    (tmp_path / "t.toml").write_text('title = "x"\nnotebook = "imagenet"\nreference = "imagenet"\nmetrics = []\n'
                                     f'[grid]\nmodel = ["repnext_m0"]\n[parameters]\n{parameters}\n')
    return tmp_path


@pytest.mark.parametrize("parameters, message", [
    ('fuse_mode = "full"', r"\['fuse_mode'\] come from repnext.reference.TABLE_FUSE_MODE, by the spec's reference"),
    ("img_sise = 224", r"\['img_sise'\] are not parameters of imagenet.ipynb; accepted: \['img_size', 'num_classes', "
                       r"'throughput_batch'\]"),
    ('paper = {model = "x"}', r"\['paper'\] are not parameters of imagenet.ipynb"),
    ("img_size = {smoke = 32}", r"parameter 'img_size' lists values for \['smoke'\]; a per-profile value needs "
                                r"every profile"),
])
def test_bad_spec_parameters_are_named(tmp_path, parameters, message):
    with pytest.raises(SpecError, match=message) as e:
        load_spec("t", folder=spec_file(tmp_path, parameters))
    assert "\n" not in str(e.value)


def test_a_cell_outside_the_contract_is_named():
    def positional(config, output, img_size=224) -> dict: ...

    def open_ended(config, output, **params) -> dict: ...

    def no_record(config, output, *, img_size=224): ...

    def swapped(output, config) -> dict: ...

    with pytest.raises(TypeError, match=r"must be \(config, output\), not \(config, output, img_size\)"):
        cell_parameters(positional)
    with pytest.raises(TypeError, match=r"only keyword-only parameters, not \['params'\]"):
        cell_parameters(open_ended)
    with pytest.raises(TypeError, match="must return the run's record"):
        cell_parameters(no_record)
    with pytest.raises(TypeError, match=r"must be \(config, output\), not \(output, config\)"):
        cell_parameters(swapped)
