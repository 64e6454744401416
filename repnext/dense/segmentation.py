"""Semantic FPN (Kirillov et al., panoptic FPN's semantic branch) on a RepNeXt FPN backbone, as mmseg's
``fpn_r50`` config with the RepNeXt wrapper: FPN 256 x 4 levels, head of 128 channels, Dropout2d 0.1."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import RepNeXtFPN


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # mmcv ConvModule's init
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SemanticFPNHead(nn.Module):
    """mmseg's ``FPNHead``: per level max(1, log2(stride / stride_0)) [conv3x3-BN-ReLU] blocks, each followed
    by a 2x bilinear upsampling above the first level; the levels summed; dropout; a 1x1 classifier."""

    def __init__(self, strides: tuple[int, ...], num_classes: int, in_channels: int = 256, channels: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            n = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers = []
            for k in range(n):
                layers.append(_conv_bn_relu(in_channels if k == 0 else channels, channels))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:]):
            out = out + F.interpolate(head(x), size=out.shape[2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(out))


class SemanticFPN(nn.Module):
    """``backbone`` (``body`` + ``fpn``) and ``decode_head``; ``forward`` returns logits at stride 4."""

    def __init__(self, model_name: str, num_classes: int = 150, backbone_weights: str | Path | None = None,
                 width: int = 256, channels: int = 128):
        super().__init__()
        self.backbone = RepNeXtFPN(model_name, width, extra_level=False, weights=backbone_weights)
        self.decode_head = SemanticFPNHead(self.backbone.strides, num_classes, width, channels)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(list(self.backbone(x).values()))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Whole-image inference: class per pixel at ``size`` (the logits resized back to the original)."""
        return F.interpolate(self(x), size=size, mode="bilinear", align_corners=False).argmax(1)


def build_semantic_fpn(model_name: str, num_classes: int = 150, backbone_weights: str | Path | None = None,
                       width: int = 256, channels: int = 128) -> SemanticFPN:
    """Semantic FPN for ``num_classes`` classes (ADE20K: 150, after reduce_zero_label); ``width`` (FPN) and
    ``channels`` (head) are mmseg's 256 and 128 unless a small profile lowers them."""
    return SemanticFPN(model_name, num_classes, backbone_weights, width, channels)
