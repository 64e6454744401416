"""A checkpoint evaluated: top-1/top-5 of the training form and of the fused form, and how far their logits differ.

The official ``main.py --eval`` and ``fuse_eval.py`` (timm's ``validate.py``) in one pass: every batch goes
through both forms, at the recipe's eval crop (repvit: Resize 256 -> CenterCrop 224; starnet: crop_pct 0.9).

    python -m repnext.validate --model repnext_m1 --checkpoint repnext_m1_distill_300e.pth --data imagenet \\
        --data-root ~/imagenet
    python -m repnext.validate --model repnext_m0 --checkpoint results/imagenet/RUN/checkpoint.pth --data digits

A checkpoint is an official release file (``{'model': ...}``, ``{'state_dict': ...}``), a run's
``checkpoint.pth`` or a ``.safetensors`` file, read with ``weights_only=True``; its class count is the head's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from timm.data import create_transform, resolve_data_config
from timm.utils import accuracy
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import CheckpointError, adapt_state_dict, read_checkpoint
from .config import RunConfig
from .data import DATASETS, DatasetError, Transformed, build_dataset
from .errors import RepnextError
from .profiles import PROFILES
from .recipes import RECIPES, get_recipe
from .runtime import Dist, environment
from .store import RunPaths, write_record

# the released files, by how they were trained (their names are in the models' pretrained cfgs)
RELEASE_TAGS = {("repvit", True): "dist_300e_in1k", ("starnet", False): "starnet_300e_in1k",
                ("starnet", True): "starnet_dist_300e_in1k"}


class ValidateError(RepnextError):
    pass


def release_file(model: str, recipe: str, distillation: bool) -> str | None:
    """The file name of the official release of ``model`` trained so, or None where none was released."""
    tag = RELEASE_TAGS.get((recipe, distillation))
    if tag is None or f"{model}.{tag}" not in timm.list_pretrained(model):
        return None
    return Path(timm.models.get_pretrained_cfg(f"{model}.{tag}").url).name


def load_model(name: str, checkpoint: str | Path) -> nn.Module:
    """``name`` with the checkpoint's weights (its class count), in eval mode; a mismatch raises, naming keys."""
    if not timm.is_model(name):
        raise ValidateError(f"unknown model {name!r}; expected a timm model, e.g. repnext_m1")
    state_dict = read_checkpoint(checkpoint)
    cfg = timm.models.get_pretrained_cfg(name)
    classifier = cfg.classifier if isinstance(cfg.classifier, str) else cfg.classifier[0]
    head = state_dict.get(f"{classifier}.weight")
    if head is None:
        raise CheckpointError(f"{checkpoint} has no {classifier}.weight: not a {name} checkpoint with a classifier")
    model = timm.create_model(name, num_classes=head.shape[0])
    model.load_state_dict(adapt_state_dict(state_dict, model, classifiers=(classifier,), first_conv=cfg.first_conv))
    return model.eval()


def fused_form(model: nn.Module) -> nn.Module:
    """The inference form: ``fuse()`` of a RepNeXt, timm's reparameterization of any other model."""
    return model.fuse() if hasattr(model, "fuse") else timm.utils.reparameterize_model(model)


def eval_loader(model: nn.Module, data: str, data_root: str | None, recipe: str, img_size: int,
                batch_size: int, workers: int = 0) -> DataLoader:
    r = get_recipe(recipe)
    data_cfg = resolve_data_config({}, model=model)
    transform = create_transform(img_size, is_training=False, crop_pct=r.eval_crop_pct,
                                 interpolation=r.eval_interpolation, mean=data_cfg["mean"], std=data_cfg["std"])
    splits = build_dataset(data, data_root, img_size)
    return DataLoader(Transformed(splits.val, transform, 0), batch_size=batch_size, num_workers=workers)


@torch.no_grad()
def compare(model: nn.Module, fused: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Top-1/top-5 (%) of both forms on the same batches, and the largest absolute logit difference."""
    correct = {"unfused": torch.zeros(2, dtype=torch.float64), "fused": torch.zeros(2, dtype=torch.float64)}
    n, diff = 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        outs = {"unfused": model(x).float(), "fused": fused(x).float()}
        for form, out in outs.items():  # accuracy() gives percentages of the batch
            correct[form] += torch.tensor(accuracy(out, y, topk=(1, min(5, out.shape[1])))).double() * len(y)
        diff = max(diff, (outs["fused"] - outs["unfused"]).abs().max().item())
        n += len(y)
    return {**{form: {"acc1": c[0].item() / n, "acc5": c[1].item() / n} for form, c in correct.items()},
            "max_logit_diff": diff, "images": n}


def validate(name: str, checkpoint: str | Path, data: str = "imagenet", data_root: str | None = None,
             recipe: str = "repvit", img_size: int | None = None, batch_size: int = 64,
             device: str = "auto", workers: int = 0) -> dict:
    """Evaluate ``checkpoint`` as ``name`` in both forms; ``img_size=None``: the dataset's profile's size."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if img_size is None:  # the digits are the smoke profile's data, at its size; the paper's data at 224 px
        img_size = next((p.img_size for p in PROFILES.values() if p.substitute_data and p.data == data),
                        PROFILES["full"].img_size)
    model = load_model(name, checkpoint)
    loader = eval_loader(model, data, data_root, recipe, img_size, batch_size, workers)
    model.to(dev)
    result = compare(model, fused_form(model), loader, dev)
    r = get_recipe(recipe)
    return {"model": name, "checkpoint": str(checkpoint), "data": data, "img_size": img_size, "recipe": recipe,
            "crop_pct": r.eval_crop_pct, "interpolation": r.eval_interpolation, **result}


def report(result: dict) -> str:
    lines = [f"{result['model']} on {result['data']} val: {result['images']} images, {result['img_size']} px, "
             f"crop_pct {result['crop_pct']:.3f} {result['interpolation']} (recipe {result['recipe']}); "
             f"checkpoint {result['checkpoint']}"]
    for form, label in (("unfused", "training form"), ("fused", "fused form")):
        lines.append(f"{label:<14} top-1 {result[form]['acc1']:.3f}  top-5 {result[form]['acc5']:.3f}")
    lines.append(f"largest logit difference: {result['max_logit_diff']:.2e}")
    return "\n".join(lines)


def run_cell(config: dict | RunConfig, output: str | Path, *, checkpoint: str | Path, batch_size: int = 64) -> dict:
    """One row of the ``released`` table as a run of the results store (the contract of ``repnext.cells``):
    validate, write record.json."""
    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    s = config.resolve()
    result = validate(config.model, checkpoint, s.data, config.data_root, config.recipe, s.img_size, batch_size,
                      config.device, s.workers)
    record = {"status": "complete", "run_id": config.run_id, "profile": config.profile, "source": "measured",
              **result, "checkpoint": Path(checkpoint).name,
              "environment": environment(torch.device("cuda" if torch.cuda.is_available() else "cpu"), Dist())}
    write_record(RunPaths(Path(output)).record, record)
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repnext.validate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a registered model, e.g. repnext_m1")
    p.add_argument("--checkpoint", required=True, help="release file, run checkpoint.pth or .safetensors")
    p.add_argument("--data", default="imagenet", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--data-root", help="ImageNet (train/ val/) or CIFAR-100 folder")
    p.add_argument("--recipe", default="repvit", help=f"whose eval crop: {', '.join(RECIPES)}")
    p.add_argument("--img-size", type=int, help="default: 224, or the smoke profile's 32 for the digits")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=4)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.recipe not in RECIPES:
            raise ValidateError(f"unknown recipe {args.recipe!r}; expected one of: {', '.join(RECIPES)}")
        if args.batch_size < 1 or (args.img_size is not None and args.img_size < 8):
            raise ValidateError(f"--batch-size must be >= 1 and --img-size >= 8, got {args.batch_size}, "
                                f"{args.img_size}")
        result = validate(args.model, args.checkpoint, args.data, args.data_root, args.recipe, args.img_size,
                          args.batch_size, args.device, args.workers)
    except (ValidateError, CheckpointError, DatasetError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
