"""A timm ``features_only`` RepNeXt under torchvision's FPN: the backbone of both dense models.

``body`` is the 4-stage feature extractor (strides 4/8/16/32, every BatchNorm trains as in the official runs),
``fpn`` torchvision's ``FeaturePyramidNetwork`` with mmdet's Xavier-uniform init. ImageNet weights (a release
``repnext_mX_distill_300e.pth`` or a run of the ``imagenet`` table) load into ``body``; the classifier is dropped.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..checkpoint import CheckpointError, read_checkpoint


def xavier_init(module: nn.Module) -> None:
    """mmcv's ``Xavier`` init (uniform, gain 1, bias 0) on every conv and linear layer of ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def load_backbone(body: nn.Module, path: str | Path) -> None:
    """ImageNet weights into a ``features_only`` body; every body key must be in the checkpoint."""
    state = {f"model.{k}": v for k, v in read_checkpoint(path).items()}
    target = body.state_dict()
    missing = sorted(set(target) - set(state))
    shapes = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or shapes:
        raise CheckpointError(f"checkpoint {path} does not fit the backbone: missing {missing[:4]} "
                              f"({len(missing)}), shape mismatches {shapes[:4]} ({len(shapes)})")
    body.load_state_dict({k: state[k] for k in target})


class RepNeXtFPN(nn.Module):
    """RepNeXt stages -> FPN (256 channels); with ``extra_level`` a P6 by max-pool(1, stride 2) of P5."""

    def __init__(self, model_name: str, out_channels: int = 256, extra_level: bool = True,
                 weights: str | Path | None = None):
        super().__init__()
        self.body = timm.create_model(model_name, features_only=True, out_indices=(0, 1, 2, 3))
        if weights is not None:
            load_backbone(self.body, weights)
        self.strides = tuple(self.body.feature_info.reduction())
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_level else None)
        xavier_init(self.fpn)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
