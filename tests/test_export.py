"""Deployment exports: real Core ML conversions and ONNX exports checked with onnxruntime, no mocks.

Core ML prediction runs on macOS only, so on Linux the Core ML checks are structural: the op histogram
against the fused PyTorch model, input/output names and shapes, and the package size against fp16 weights.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torchvision.transforms import functional as TF

from repnext.complexity import count_params, inference_form
from repnext.export import (
    ExportError,
    Normalized,
    check_parity,
    export_coreml,
    export_onnx,
    main,
    package_bytes,
)
from repnext.models import REPNEXT_MODELS, SINGLE_BRANCH_MODELS

from .conftest import randomize_bn

ct = pytest.importorskip("coremltools", reason="the 'export' extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the 'export' extra is not installed")
ROOT = Path(__file__).resolve().parents[1]


def module_counts(model: nn.Module) -> dict[str, int]:
    kinds = {"conv": nn.Conv2d, "linear": nn.Linear, "gelu": nn.GELU, "batch_norm": nn.modules.batchnorm._BatchNorm}
    return {op: sum(isinstance(m, cls) for m in model.modules()) for op, cls in kinds.items()}


def test_normalized_input_is_bit_identical_to_timm_preprocessing():
    model = randomize_bn(timm.create_model("repnext_m0", num_classes=10)).eval()
    cfg = model.pretrained_cfg
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float()
    with torch.no_grad():
        wrapped = Normalized(model, cfg["mean"], cfg["std"])(pixels)
        # what timm's eval transform feeds the model: ToTensor (/255) then Normalize
        reference = model(TF.normalize(pixels / 255, cfg["mean"], cfg["std"]))
    assert torch.equal(wrapped, reference)


@pytest.fixture(scope="module")
def coreml_m0(tmp_path_factory):
    model = timm.create_model("repnext_m0", num_classes=10)
    path = tmp_path_factory.mktemp("coreml") / "m0.mlpackage"
    start = time.perf_counter()
    record = export_coreml(model, path, img_size=64)
    print(f"Core ML repnext_m0 @64px: {time.perf_counter() - start:.1f} s, {record['size_bytes']} bytes")
    return model, path, record


def test_coreml_ops_match_the_fused_model(coreml_m0):
    model, _, record = coreml_m0
    fused = module_counts(inference_form(model))
    ops = record["ops"]
    assert fused["conv"] > 90  # M0's fused form: stem, mixers, 1x1 channel mixers, downsamples
    for op in ("conv", "linear", "gelu"):
        assert ops.get(op, 0) == fused[op], (op, ops)
    assert fused["batch_norm"] == 0 and "batch_norm" not in ops  # fully folded
    assert ops["reduce_mean"] == 1  # the global average pool
    assert ops["split"] > 0 and ops["concat"] > 0  # ChunkConv's chunk/cat stay as split/concat


def test_coreml_io_names_shapes_and_metadata(coreml_m0):
    model, path, record = coreml_m0
    assert record["model"] == "repnext_m0" and record["img_size"] == 64
    assert [(d["name"], d["kind"], d.get("color"), d["shape"]) for d in record["inputs"]] == [
        ("image", "image", "RGB", [1, 3, 64, 64])]
    assert [(d["name"], d["shape"]) for d in record["outputs"]] == [("logits", [1, 10])]
    assert (record["mean"], record["std"]) == (list(model.pretrained_cfg["mean"]), list(model.pretrained_cfg["std"]))
    assert record["fuse"] == {"mode": "full", "channels_last": True, "inplace": True}
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == 7  # iOS 16
    assert spec.description.metadata.userDefined["repnext.model"] == "repnext_m0"


def test_coreml_package_holds_fp16_weights(coreml_m0):
    model, path, record = coreml_m0
    assert path.is_dir() and (path / "Manifest.json").is_file()
    assert record["size_bytes"] == package_bytes(path)
    params = count_params(inference_form(model))
    assert 2 * params <= record["size_bytes"] <= 2.2 * params, (record["size_bytes"], params)


def test_coreml_latency_is_measured_on_macos_only(coreml_m0):
    record = coreml_m0[2]
    assert record["seconds"] > 0 and record["coremltools"] == ct.__version__
    if sys.platform == "darwin":
        assert record["latency_ms"] > 0 and record["latency_missing"] is None
    else:
        assert record["latency_ms"] is None and "needs macOS" in record["latency_missing"]


@pytest.mark.parametrize("name", ["repnext_m0", "repnext_m0e", "repvit_m0_6"])
def test_onnx_matches_pytorch(tmp_path, name):
    model = randomize_bn(timm.create_model(name)).eval()  # non-trivial BN statistics: folds are really tested
    record = check_parity(export_onnx(model, tmp_path / f"{name}.onnx", img_size=64))
    print(f"ONNX {name} @64px: max abs err {record['max_abs_err']:.3g} (unfused {record['max_abs_err_unfused']:.3g},"
          f" logits up to {record['logits_abs_max']:.3g})")
    assert record["logits_abs_max"] > 0.1  # the error is measured on logits that are not all ~0
    assert record["max_abs_err"] <= 1e-4 and record["max_abs_err_unfused"] <= 1e-4
    assert record["inputs"] == [{"name": "image", "shape": ["batch", 3, 64, 64]}]
    assert record["outputs"] == [{"name": "logits", "shape": ["batch", 1000]}]
    assert record["ops"]["Conv"] == module_counts(inference_form(model))["conv"]
    assert "BatchNormalization" not in record["ops"]


def test_check_parity_rejects_large_or_nan_errors():
    ok = {"model": "m", "max_abs_err": 5e-5, "logits_abs_max": 8.0}
    assert check_parity(ok) is ok
    with pytest.raises(ExportError, match=r"m: onnxruntime logits differ from PyTorch by 0\.0002"):
        check_parity(ok | {"max_abs_err": 2e-4})
    with pytest.raises(ExportError, match="nan"):
        check_parity(ok | {"max_abs_err": float("nan")})


def test_onnx_export_loads_the_checkpoint(tmp_path):
    trained = randomize_bn(timm.create_model("repnext_m0"), seed=3).eval()
    torch.save({"model": trained.state_dict()}, tmp_path / "ckpt.pth")
    path = tmp_path / "m0.onnx"
    export_onnx("repnext_m0", path, img_size=32, checkpoint=tmp_path / "ckpt.pth")
    x = torch.randn(3, 3, 32, 32)
    out = torch.from_numpy(ort.InferenceSession(str(path)).run(["logits"], {"image": x.numpy()})[0])
    with torch.no_grad():
        expected, fresh = trained(x), timm.create_model("repnext_m0").eval()(x)
    assert (out - expected).abs().max() <= 1e-4
    assert (out - fresh).abs().max() > 1e-2  # the checkpoint's weights, not a fresh initialisation


def test_cli_writes_artifacts_records_and_summary(tmp_path, capsys):
    assert main(["--model", "repnext_m0", "--format", "onnx", "--output", str(tmp_path), "--img-size", "32",
                 "--quiet"]) == 0
    record = json.loads((tmp_path / "repnext_m0_32.onnx.json").read_text())
    assert record["status"] == "complete" and record["source"] == "export"
    assert record["max_abs_err"] <= 1e-4 and record["environment"]["torch"] == torch.__version__
    assert Path(record["path"]).stat().st_size == record["size_bytes"] > 0
    summary = capsys.readouterr().out.splitlines()
    assert summary[0].split()[:3] == ["model", "format", "size"]
    assert summary[1].split()[:2] == ["repnext_m0", "onnx"] and "max|err|" in summary[1]


def test_cli_unknown_model_fails_naming_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "repnext.export", "--model", "repnext_m0", "repnext_m9", "--output", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown model(s) 'repnext_m9'; `python -m repnext.models` lists them")
    assert not list(tmp_path.iterdir())  # checked before any export


def test_cli_missing_checkpoint_fails_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    assert main(["--model", "repnext_m0", "--checkpoint", str(missing), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint {missing} does not exist"


def test_cli_unreadable_checkpoint_fails_with_a_record(tmp_path, capsys):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["--model", "repnext_m0", "--format", "onnx", "--checkpoint", str(tmp_path / "junk.pth"),
                 "--output", str(tmp_path / "out"), "--quiet"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: repnext_m0 (onnx): ") and "junk.pth" in errors[0]
    record = json.loads((tmp_path / "out" / "repnext_m0_224.onnx.json").read_text())
    assert record["status"] == "failed" and "junk.pth" in record["error"]


@pytest.mark.slow
def test_every_repnext_model_converts_to_coreml(tmp_path, capsys):
    """The issue's requirement: M0-M5 and M0E-M2E all convert, at the paper's 224 px."""
    names = list(REPNEXT_MODELS) + list(SINGLE_BRANCH_MODELS[:3])
    start = time.perf_counter()
    assert main(["--model", *names, "--format", "coreml", "--output", str(tmp_path), "--quiet"]) == 0
    print(f"{len(names)} Core ML conversions at 224 px: {time.perf_counter() - start:.0f} s")
    for name in names:
        record = json.loads((tmp_path / f"{name}_224.coreml.json").read_text())
        fused = inference_form(timm.create_model(name))
        assert record["status"] == "complete" and (tmp_path / f"{name}_224.mlpackage" / "Manifest.json").is_file()
        assert record["ops"]["conv"] == module_counts(fused)["conv"], name
        assert [d["shape"] for d in record["outputs"]] == [[1, 1000]]
        assert 2 * count_params(fused) <= record["size_bytes"] <= 2.2 * count_params(fused), name
