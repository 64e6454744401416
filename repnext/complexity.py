"""Parameters and MACs in the paper's convention: the fused (inference) form, multiply-accumulates of
convolutions and linear layers at 1x3x224x224 (``torch.utils.flop_counter`` FLOPs / 2)."""
from __future__ import annotations

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .counts import Complexity, measured_counts
from .reparam import fuse


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


def measure(name: str, num_classes: int = 1000, img_size: int = 224, fuse_mode: str = "full") -> Complexity:
    model = timm.create_model(name, num_classes=num_classes)
    fused = inference_form(model, fuse_mode)
    return Complexity(
        model=name, num_classes=num_classes, img_size=img_size, fuse_mode=fuse_mode,
        train_params=count_params(model),
        fused_params=count_params(fused), macs=count_macs(fused, (1, 3, img_size, img_size)),
    )


def complexity(name: str, num_classes: int = 1000, img_size: int = 224, fuse_mode: str = "full") -> Complexity:
    """``measure``'s numbers, taken from the measured ``paper_tables/models.json`` where it holds them (a run
    need not count again what ``make models`` counted), else counted now."""
    found = measured_counts().get((name, num_classes, img_size, fuse_mode))
    return found if found is not None else measure(name, num_classes, img_size, fuse_mode)
