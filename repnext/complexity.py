"""Parameters and MACs in the paper's convention: the fused (inference) form, multiply-accumulates of
convolutions and linear layers at 1x3x224x224 (``torch.utils.flop_counter`` FLOPs / 2)."""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import PAPER_NUM_CLASSES
from .reparam import fuse

# the dataset behind each reference table, where it is not ImageNet-1K (its class count: PAPER_NUM_CLASSES)
TABLE_DATA = {"compact_cifar100": "cifar100"}
# which inference form each table counted: the README's main tables count the official fuse (post-mixer
# BatchNorms kept: M1E 5,255,080 -> 5.3M, fully folded 5,245,520 would print 5.2M); the compact-model
# tables count the fully folded form (M0 2.328M, not 2.333M). The one place: a table spec's runs count with
# their reference table's (ablations.spec), and so do `make models` and the imported logs.
TABLE_FUSE_MODE = {"compact_cifar100": "full", "compact_imagenet": "full"}
# the exact counts behind paper_tables/models.md, written with it by `python -m repnext.models --counts`
MEASURED_COUNTS = Path(__file__).resolve().parents[1] / "paper_tables" / "models.json"


def table_fuse_mode(table: str) -> str:
    """The inference form whose params/MACs the paper's reference table ``table`` reports."""
    return TABLE_FUSE_MODE.get(table, "official")


def table_num_classes(table: str) -> int:
    """The class count of the dataset behind the paper's reference table ``table``."""
    return PAPER_NUM_CLASSES[TABLE_DATA.get(table, "imagenet")]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def inference_form(model: nn.Module, mode: str = "full") -> nn.Module:
    """The fused model: RepNeXt's ``fuse(mode)``, else timm's generic hook (models without one: as is)."""
    return fuse(model.eval(), mode)


@dataclass(frozen=True)
class Complexity:
    model: str
    num_classes: int
    img_size: int
    fuse_mode: str
    train_params: int
    fused_params: int
    macs: int

    def as_dict(self) -> dict:
        return asdict(self)


def measure(name: str, num_classes: int = 1000, img_size: int = 224, fuse_mode: str = "full") -> Complexity:
    model = timm.create_model(name, num_classes=num_classes)
    fused = inference_form(model, fuse_mode)
    return Complexity(
        model=name, num_classes=num_classes, img_size=img_size, fuse_mode=fuse_mode,
        train_params=count_params(model),
        fused_params=count_params(fused), macs=count_macs(fused, (1, 3, img_size, img_size)),
    )


def counting_fingerprint() -> str:
    """What the counts depend on: the sources of the models, their fusion and this counting; timm's and torch's
    versions (timm's baselines, torch's FLOP counter)."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"timm {timm.__version__} torch {torch.__version__}".encode())
    for path in sorted([*(here / "models").glob("*.py"), here / "reparam.py", here / "complexity.py"]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def measured_counts(path: Path = MEASURED_COUNTS) -> dict[tuple, Complexity]:
    """The counts of ``path`` by (model, num_classes, img_size, fuse_mode); none when the file is missing or was
    measured by other code or versions than these (its fingerprint differs)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    if data.get("fingerprint") != counting_fingerprint():
        return {}
    counts = [Complexity(**c) for c in data["counts"]]
    return {(c.model, c.num_classes, c.img_size, c.fuse_mode): c for c in counts}


def complexity(name: str, num_classes: int = 1000, img_size: int = 224, fuse_mode: str = "full") -> Complexity:
    """``measure``'s numbers, taken from the measured ``paper_tables/models.json`` where it holds them (a run
    need not count again what ``make models`` counted), else counted now."""
    found = measured_counts().get((name, num_classes, img_size, fuse_mode))
    return found if found is not None else measure(name, num_classes, img_size, fuse_mode)
