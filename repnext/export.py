"""Deployment exports of the fused (inference) form: Core ML ``.mlpackage`` and ONNX, one JSON record each.

    python -m repnext.export --model repnext_m0 repnext_m1 --format both --output exports/
    python -m repnext.export --model repnext_m1 --checkpoint repnext_m1_distill_300e.pth --output exports/

Core ML: traced, converted to an ML program for iOS 16, input ``image`` (RGB, 0..255, the model's timm
normalisation inside the graph), output ``logits``. Prediction runs on macOS only, so on Linux the record
holds the op histogram, input/output shapes and size, and ``latency_ms`` is None with the reason. ONNX: the
TorchScript exporter (the default dynamo exporter needs onnxscript, which is not a dependency), a dynamic
batch axis, and the max abs error of onnxruntime's logits against PyTorch's, which must stay <= 1e-4.
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m repnext.export: a bad argument is answered before the imports below
    from repnext.cli import export_argument_error, export_parser, reject_bad_arguments

    reject_bad_arguments(export_parser(), export_argument_error)

import contextlib
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from torch import nn
from tqdm import tqdm

from .checkpoint import adapt_state_dict, read_checkpoint
from .cli import EXPORT_FORMATS, export_argument_error, export_parser
from .complexity import inference_form
from .messages import first_line
from .models import RepNeXt
from .store import write_json

PARITY_TOL = 1e-4
FORMATS = EXPORT_FORMATS


class ExportError(RuntimeError):
    """An export that did not produce what was asked (wrong I/O, parity beyond tolerance, bad input)."""


class Normalized(nn.Module):
    """``model`` fed 0..255 RGB: timm's ``ToTensor`` + ``Normalize`` as the graph's first ops, written as
    they are (divide, subtract, divide) so the result is bit-identical to the model fed timm's tensors.
    ImageType's own ``scale`` is one scalar and cannot hold a per-channel std."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x / 255 - self.mean) / self.std)


def load_weights(model: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Weights from ``checkpoint``, read safely; a mismatch raises naming the keys."""
    if isinstance(model, RepNeXt):  # official containers and heads understood, EMA ignored
        model.load_pretrained(checkpoint)
    else:
        model.load_state_dict(adapt_state_dict(read_checkpoint(checkpoint), model))
    return model


def build_model(name: str, checkpoint: str | Path | None = None) -> nn.Module:
    """A timm model (importing this package registered ours), optionally with ``checkpoint``'s weights."""
    if not timm.is_model(name):
        raise ExportError(f"unknown model {name!r}; `python -m repnext.models` lists them")
    model = timm.create_model(name)
    return (load_weights(model, checkpoint) if checkpoint is not None else model).eval()


def _prepare(model_or_name: nn.Module | str, checkpoint: str | Path | None) -> tuple[str, nn.Module, nn.Module]:
    """(name, model as given, fused form); a model already fused (``inference_form`` set) is kept."""
    if isinstance(model_or_name, str):
        model = build_model(model_or_name, checkpoint)
    else:
        model = (load_weights(model_or_name, checkpoint) if checkpoint is not None else model_or_name).eval()
    name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    fused = model if hasattr(model, "inference_form") else inference_form(model)
    # traced graphs and ONNX/Core ML layouts are NCHW; fuse() may have picked channels_last for CPU speed
    return name, model, fused.to(memory_format=torch.contiguous_format)


def package_bytes(path: Path) -> int:
    """Size of a file, or of a directory (an ``.mlpackage``) in total."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _quiet_coreml(verbose: bool):
    """Hide coremltools' import-time notices (its ``logging`` records) and its per-pass tqdm bars."""
    if verbose:
        yield
        return
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            yield
    finally:
        logger.setLevel(level)


def mil_op_histogram(spec) -> dict[str, int]:
    """Ops per type in an ML program spec (nested blocks included), most frequent first."""
    counts: Counter[str] = Counter()

    def visit(block) -> None:
        for op in block.operations:
            counts[op.type] += 1
            for inner in op.blocks:
                visit(inner)

    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            visit(block)
    return dict(counts.most_common())


def coreml_io(spec) -> dict[str, list[dict]]:
    """Names, kinds and shapes of the model's inputs and outputs, read from its spec."""
    from coremltools.proto import FeatureTypes_pb2 as ft

    def describe(feature) -> dict:
        kind = feature.type.WhichOneof("Type")
        if kind == "imageType":
            t = feature.type.imageType
            color = ft.ImageFeatureType.ColorSpace.Name(t.colorSpace)
            return {"name": feature.name, "kind": "image", "color": color, "shape": [1, 3, t.height, t.width]}
        t = feature.type.multiArrayType
        return {"name": feature.name, "kind": "array", "dtype": ft.ArrayFeatureType.ArrayDataType.Name(t.dataType),
                "shape": list(t.shape)}

    return {"inputs": [describe(f) for f in spec.description.input],
            "outputs": [describe(f) for f in spec.description.output]}


def export_coreml(
        model_or_name: nn.Module | str,
        path: str | Path,
        img_size: int = 224,
        checkpoint: str | Path | None = None,
        compute_precision: str = "float16",
        latency_runs: int = 50,
        verbose: bool = False,
) -> dict:
    """Convert the fused model to ``path`` (an ``.mlpackage``) and return its record."""
    with _quiet_coreml(verbose):  # importing it logs notices about untested torch/sklearn versions on Linux
        import coremltools as ct

    name, model, fused = _prepare(model_or_name, checkpoint)
    cfg = resolve_data_config({}, model=model)
    path = Path(path)
    example = torch.zeros(1, 3, img_size, img_size)
    start = time.perf_counter()
    with _quiet_coreml(verbose):
        with warnings.catch_warnings():  # torch 2.14 deprecates jit.trace; coremltools 9 still converts it best
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(Normalized(fused, cfg["mean"], cfg["std"]).eval(), example)
        mlmodel = ct.convert(
            traced, inputs=[ct.ImageType(name="image", shape=example.shape, color_layout=ct.colorlayout.RGB)],
            outputs=[ct.TensorType(name="logits")], convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=getattr(ct.precision, compute_precision.upper()),
        )
        mlmodel.short_description = f"{name} ({img_size}x{img_size} RGB 0..255 -> logits), fused by repnext"
        mlmodel.user_defined_metadata.update({"repnext.model": name, "repnext.img_size": str(img_size),
                                              "repnext.mean": str(cfg["mean"]), "repnext.std": str(cfg["std"])})
        path.parent.mkdir(parents=True, exist_ok=True)
        mlmodel.save(str(path))
    seconds = time.perf_counter() - start
    # check the artifact on disk, not the in-memory object; it can be loaded for prediction on macOS only
    darwin = sys.platform == "darwin"
    saved = ct.models.MLModel(str(path), skip_model_load=not darwin)
    spec = saved.get_spec()
    io = coreml_io(spec)
    expected = {"inputs": [("image", [1, 3, img_size, img_size])], "outputs": [("logits", [1, model.num_classes])]}
    got = {k: [(d["name"], d["shape"]) for d in v] for k, v in io.items()}
    if got != expected:
        raise ExportError(f"{path}: Core ML inputs/outputs {got}, expected {expected}")
    record = {
        "model": name, "format": "coreml", "path": str(path), "img_size": img_size,
        "fuse": getattr(fused, "inference_form", {"mode": "timm reparameterize_model"}),
        "mean": list(cfg["mean"]), "std": list(cfg["std"]), "compute_precision": compute_precision,
        "deployment_target": "iOS16", **io, "ops": mil_op_histogram(spec), "size_bytes": package_bytes(path),
        "seconds": round(seconds, 3), "coremltools": ct.__version__, "torch": torch.__version__,
        "latency_ms": None,
        "latency_missing": None if darwin else f"Core ML prediction needs macOS; this is {platform.system()}, "
                                                 "so the package was converted and inspected but not run",
    }
    if darwin:
        record["latency_ms"] = coreml_latency_ms(saved, img_size, latency_runs)
    return record


def coreml_latency_ms(mlmodel, img_size: int, runs: int = 50) -> float:
    """Median ms of ``MLModel.predict`` at batch 1 (after a warm-up that compiles for the device); macOS only."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (img_size, img_size, 3), dtype=np.uint8)
    inputs = {"image": Image.fromarray(pixels)}
    mlmodel.predict(inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        mlmodel.predict(inputs)
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 3)


@torch.no_grad()
def export_onnx(
        model_or_name: nn.Module | str,
        path: str | Path,
        img_size: int = 224,
        checkpoint: str | Path | None = None,
        opset: int = 17,
        batch: int = 2,
) -> dict:
    """Export the fused model to ``path`` (dynamic batch) and measure onnxruntime's parity with PyTorch.

    The parity batch (``batch`` images, fixed seed) differs in size from the traced one, so the dynamic
    batch axis is exercised too. ``max_abs_err`` is against the fused model that was exported,
    ``max_abs_err_unfused`` against the model as given (fusion error included).
    """
    import onnx
    import onnxruntime as ort

    name, model, fused = _prepare(model_or_name, checkpoint)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and still needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(fused, (torch.zeros(1, 3, img_size, img_size),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"], opset_version=opset,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    seconds = time.perf_counter() - start
    graph = onnx.load(str(path)).graph
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    out = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    ref, ref_unfused = fused(x), model(x)
    return {
        "model": name, "format": "onnx", "path": str(path), "img_size": img_size, "opset": opset,
        "fuse": getattr(fused, "inference_form", {"mode": "timm reparameterize_model"}),
        "inputs": [{"name": i.name, "shape": list(i.shape)} for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": list(o.shape)} for o in session.get_outputs()],
        "ops": dict(Counter(node.op_type for node in graph.node).most_common()),
        "size_bytes": package_bytes(path), "seconds": round(seconds, 3),
        "parity_batch": batch, "logits_abs_max": ref.abs().max().item(),
        "max_abs_err": (out - ref).abs().max().item(), "max_abs_err_unfused": (out - ref_unfused).abs().max().item(),
        "onnx": onnx.__version__, "onnxruntime": ort.__version__, "torch": torch.__version__,
    }


def check_parity(record: dict, tol: float = PARITY_TOL) -> dict:
    """``record`` if onnxruntime matched PyTorch within ``tol``, else an ExportError saying by how much."""
    err = record["max_abs_err"]
    if not err <= tol:  # also catches NaN
        raise ExportError(f"{record['model']}: onnxruntime logits differ from PyTorch by {err:.3g} "
                          f"(max abs, tolerance {tol:g}; logits reach {record['logits_abs_max']:.3g})")
    return record


def _summary(records: list[dict]) -> str:
    lines = [f"{'model':<22}{'format':<8}{'size MB':>9}{'ops':>7}{'s':>7}  parity / latency"]
    for r in records:
        if r.get("status") == "failed":
            lines.append(f"{r['model']:<22}{r['format']:<8}  failed: {r['error']}")
            continue
        ops = sum(n for op, n in r["ops"].items() if op not in ("const", "Constant"))
        if r["format"] == "onnx":
            note = f"max|err| {r['max_abs_err']:.2e}"
        else:
            note = f"{r['latency_ms']:.2f} ms" if r["latency_ms"] is not None else "latency: n/a (needs macOS)"
        size = r["size_bytes"] / 1e6
        lines.append(f"{r['model']:<22}{r['format']:<8}{size:>9.2f}{ops:>7}{r['seconds']:>7.1f}  {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = export_parser()
    args = parser.parse_args(argv)

    from .runtime import Dist, environment  # lazy: torch, and only records need it

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if export_argument_error(args) is not None:
        return fail(export_argument_error(args))
    unknown = [name for name in args.model if not timm.is_model(name)]
    if unknown:
        return fail(f"unknown model(s) {', '.join(map(repr, unknown))}; `python -m repnext.models` lists them")
    formats = FORMATS if args.format == "both" else (args.format,)
    env = environment(torch.device("cpu"), Dist())
    records = []
    for name in tqdm(args.model, desc="export", unit="model", disable=args.quiet, file=sys.stderr):
        stem = f"{name}_{args.img_size}"
        model = None
        for fmt in formats:
            try:  # any failure of one export: one line for it, and the other exports still run
                if model is None:  # built (and its checkpoint read) once for both formats
                    model = build_model(name, args.checkpoint)
                if fmt == "coreml":
                    record = export_coreml(model, args.output / f"{stem}.mlpackage", args.img_size)
                else:
                    record = check_parity(export_onnx(model, args.output / f"{stem}.onnx", args.img_size,
                                                      opset=args.opset))
                record = {"status": "complete", **record}
            except Exception as e:
                message = first_line(e)
                tqdm.write(f"error: {name} ({fmt}): {message}", file=sys.stderr)
                record = {"status": "failed", "model": name, "format": fmt, "error": message}
            records.append(record)
            write_json(args.output / f"{stem}.{fmt}.json", {"source": "export", **record, "environment": env})
    print(_summary(records), end="")
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
