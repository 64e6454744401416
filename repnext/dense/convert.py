"""Convert a released mmdet Mask R-CNN checkpoint (``repnext_mX_coco.pth``) to the project's Mask R-CNN.

    python -m repnext.dense.convert repnext_m3_coco.pth repnext_m3_coco.safetensors [--model repnext_m3]
        [--evaluate /data/coco]   # then COCO val2017 box/mask APs through the project's evaluation

Names: mmdet's ``backbone.*`` is the RepNeXt module itself (``stem``/``stages``, no head), here the timm
``features_only`` body; ``neck.lateral_convs``/``fpn_convs`` are torchvision FPN's ``inner_blocks``/
``layer_blocks``; the heads map one to one. Layouts that differ:

* ``fc_cls``: mmdet puts background last (row 80), torchvision first (row 0): rows rotate by one;
* ``fc_reg`` (80 x 4, class-specific) and ``conv_logits`` (80): torchvision has a background slot first (never
  used at inference), filled with zeros;
* RPN: the same 3 anchors per location in the same order in both. mmdet's ``AnchorGenerator``
  (``scale_major``) and torchvision's ``generate_anchors`` both lay out ratios x scales ratio-major with
  ratio = h / w (0.5, 1, 2), and both read ``rpn_cls`` (A channels, sigmoid) and ``rpn_reg`` (A x 4, dx dy dw
  dh) as anchor-major per location: no reordering (tests/test_dense_convert.py checks the base anchors).

The output is a safetensors file (or, for another suffix, ``{'model': state_dict}`` that loads with
``weights_only=True``) holding the full state dict of ``build_mask_rcnn(model)``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torchvision.models.detection import MaskRCNN

from ..checkpoint import CheckpointError, read_checkpoint, require_fit
from ..data import DatasetError
from ..runtime import Dist
from ..train import TrainingError, pick_device
from .coco import CocoInstances
from .detection import build_mask_rcnn
from .engine import evaluate

Tensor = torch.Tensor


def _background_first(t: Tensor) -> Tensor:
    """mmdet's fc_cls rows are classes 0..79 then background; torchvision's background then classes."""
    return torch.cat([t[-1:], t[:-1]])


def _zero_background(rows: int) -> Callable[[Tensor], Tensor]:
    """Prepend the background's ``rows`` (never used at inference) as zeros."""
    return lambda t: torch.cat([t.new_zeros((rows, *t.shape[1:])), t])


def _same(t: Tensor) -> Tensor:
    return t


# official name pattern -> (target name candidates, newest torchvision first; the tensor's transform)
RULES: list[tuple[str, tuple[str, ...], Callable[[Tensor], Tensor]]] = [
    (r"neck\.lateral_convs\.(\d+)\.conv\.(\w+)", ("backbone.fpn.inner_blocks.{0}.0.{1}",
                                                  "backbone.fpn.inner_blocks.{0}.{1}"), _same),
    (r"neck\.fpn_convs\.(\d+)\.conv\.(\w+)", ("backbone.fpn.layer_blocks.{0}.0.{1}",
                                             "backbone.fpn.layer_blocks.{0}.{1}"), _same),
    (r"rpn_head\.rpn_conv\.(\w+)", ("rpn.head.conv.0.0.{0}", "rpn.head.conv.{0}"), _same),
    (r"rpn_head\.rpn_cls\.(\w+)", ("rpn.head.cls_logits.{0}",), _same),
    (r"rpn_head\.rpn_reg\.(\w+)", ("rpn.head.bbox_pred.{0}",), _same),
    (r"roi_head\.bbox_head\.shared_fcs\.0\.(\w+)", ("roi_heads.box_head.fc6.{0}",), _same),
    (r"roi_head\.bbox_head\.shared_fcs\.1\.(\w+)", ("roi_heads.box_head.fc7.{0}",), _same),
    (r"roi_head\.bbox_head\.fc_cls\.(\w+)", ("roi_heads.box_predictor.cls_score.{0}",), _background_first),
    (r"roi_head\.bbox_head\.fc_reg\.(\w+)", ("roi_heads.box_predictor.bbox_pred.{0}",), _zero_background(4)),
    (r"roi_head\.mask_head\.convs\.(\d+)\.conv\.(\w+)", ("roi_heads.mask_head.{0}.0.{1}",
                                                        "roi_heads.mask_head.mask_fcn{n1}.{1}"), _same),
    (r"roi_head\.mask_head\.upsample\.(\w+)", ("roi_heads.mask_predictor.conv5_mask.{0}",), _same),
    (r"roi_head\.mask_head\.conv_logits\.(\w+)", ("roi_heads.mask_predictor.mask_fcn_logits.{0}",),
     _zero_background(1)),
]


def _backbone_name(key: str, target: dict) -> str | None:
    """``backbone.stages.0...`` -> the timm features body's name (FeatureGetterNet: ``model.``; FeatureListNet
    flattens the first level: ``stages_0``)."""
    rest = key.removeprefix("backbone.")
    flat = re.sub(r"^stages\.(\d+)", r"stages_\1", rest)
    candidates = (f"backbone.body.model.{rest}", f"backbone.body.{rest}", f"backbone.body.{flat}")
    return next((c for c in candidates if c in target), None)


def target_name(key: str, target: dict) -> tuple[str | None, Callable[[Tensor], Tensor]]:
    """The project's name for an official key, and how its tensor changes; (None, _) when nothing matches."""
    if key.startswith("backbone."):
        return _backbone_name(key, target), _same
    for pattern, candidates, transform in RULES:
        m = re.fullmatch(pattern, key)
        if m:
            groups = m.groups()
            n1 = int(groups[0]) + 1 if groups[0].isdigit() else None
            names = [c.format(*groups, n1=n1) for c in candidates]
            return next((n for n in names if n in target), None), transform
    return None, _same


def convert_state_dict(official: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """``official`` (mmdet names) renamed and reshaped onto ``target``'s names; every key of both sides must be
    accounted for, and every shape must fit, else a CheckpointError names what does not."""
    out, unmapped, shapes = {}, [], []
    for key, value in official.items():
        name, transform = target_name(key, target)
        if name is None:
            unmapped.append(key)
            continue
        value = transform(value)
        if value.shape != target[name].shape:
            shapes.append(f"{key} -> {name} {tuple(value.shape)} vs {tuple(target[name].shape)}")
        out[name] = value
    for name in set(target) - set(out):
        if name.endswith("num_batches_tracked"):  # a counter only; some exports drop it
            out[name] = target[name]
    require_fit("the Mask R-CNN", {"official keys with no counterpart": unmapped,
                                   "model keys the checkpoint does not fill": set(target) - set(out)}, shapes)
    return out


# --- the command ---------------------------------------------------------------------------------------

def _model_from_name(path: Path) -> str | None:
    parts = path.name.split(".")[0].split("_")  # the longest prefix timm knows: repnext_m3_coco -> repnext_m3
    return next(("_".join(parts[:i]) for i in range(len(parts), 0, -1) if timm.is_model("_".join(parts[:i]))), None)


def save_state_dict(state_dict: dict[str, Tensor], path: Path) -> Path:
    """Atomically: ``.safetensors`` as safetensors, anything else as ``{'model': ...}`` for torch.load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tensors = {k: v.contiguous() for k, v in state_dict.items()}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, tmp)
        else:
            torch.save({"model": tensors}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def convert(src: str | Path, dst: str | Path, model: str | None = None) -> MaskRCNN:
    """Read ``src`` (weights only), fit it to ``build_mask_rcnn(model)`` strictly, write ``dst``; the model."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    model = model or _model_from_name(src)
    if model is None or not timm.is_model(model):
        raise CheckpointError(f"{src}: cannot tell the backbone from {model or 'the file name'!r}; "
                              "pass --model repnext_m3 (or m4, m5)")
    official = read_checkpoint(src)  # mmdet keeps it under 'state_dict', beside 'meta' and 'optimizer'
    net = build_mask_rcnn(model)
    state_dict = convert_state_dict(official, net.state_dict())
    net.load_state_dict(state_dict, strict=True)
    save_state_dict(net.state_dict(), dst)
    return net


def evaluate_on_coco(model: MaskRCNN, root: str | Path, device: str = "auto") -> dict[str, float]:
    """The detector's COCO val2017 APs (percent) through the tables' evaluation (pycocotools' COCOeval)."""
    val = CocoInstances(root, "val", train=False)
    classes = model.roi_heads.box_predictor.cls_score.out_features - 1
    if val.num_classes != classes:
        raise DatasetError(f"{root}: the val set has {val.num_classes} categories, the detector {classes}; "
                           "expected COCO 2017 (80)")
    dev = pick_device(device)
    return evaluate(model.to(dev), "detection", val, dev, Dist())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repnext.dense.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", help="the official mmdet checkpoint (repnext_mX_coco.pth)")
    p.add_argument("dst", help="the output: .safetensors, or another suffix for a torch.load-able file")
    p.add_argument("--model", help="the backbone (default: from the file name, e.g. repnext_m3)")
    p.add_argument("--evaluate", metavar="COCO_ROOT", help="then evaluate on val2017 (annotations/, val2017/)")
    p.add_argument("--device", default="auto", help="for --evaluate: auto, cpu, cuda (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        model = convert(args.src, args.dst, args.model)
        print(f"{args.dst}: {len(model.state_dict())} tensors <- {args.src}")
        if args.evaluate:
            m = evaluate_on_coco(model, args.evaluate, args.device)
            print(f"val2017: AP^b {m['box_ap']:.1f} {m['box_ap50']:.1f} {m['box_ap75']:.1f}, "
                  f"AP^m {m['mask_ap']:.1f} {m['mask_ap50']:.1f} {m['mask_ap75']:.1f}")
    except (CheckpointError, DatasetError, TrainingError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
