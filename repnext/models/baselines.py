""" Baselines the RepNeXt tables compare against, registered with timm

* ``repvit_m0_6``: RepViT-M0.6 of the compact-model comparison (dims 40/80/160/320, depths 1/1/8/1, the
  non-legacy layout, no distillation head). timm has the RepVit class but registers no M0.6.
* ``convnext_femto_ds_a`` / ``convnext_femto_ds_b``: ConvNeXt-femto whose three between-stage downsample
  layers (LayerNorm + 2x2 stride-2 conv) are replaced by RepNeXt's downsampling design, as in the RepNeXt
  README's ablation. A takes the shortcut before the norm, B after it (so B's norm can fold into the
  depthwise conv). The logged runs used ``mlp_ratio=1``; the README snippet defaults to 2.

Papers: RepViT (https://arxiv.org/abs/2307.09283), ConvNeXt (https://arxiv.org/abs/2201.03545),
RepNeXt (https://arxiv.org/abs/2406.16004).
"""

import torch
import torch.nn as nn
from timm.layers import LayerNorm, LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt
from timm.models.convnext import _cfg as _convnext_cfg
from timm.models.convnext import checkpoint_filter_fn as convnext_filter_fn
from timm.models.repvit import RepVit, RepVitClassifier
from timm.models.repvit import _cfg as _repvit_cfg
from torch.jit import Final

__all__ = ["ConvNeXtDS", "ConvNeXtDownsample", "RepVitNoDist"]


class ConvNeXtDownsample(nn.Module):
    """RepNeXt-style downsampling for ConvNeXt: depthwise 7x7 stride 2 (C -> 2C) -> LayerNorm -> MLP, with a
    shortcut around the MLP taken before the norm (``variant='A'``) or after it (``'B'``)."""

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 1.0, variant: str = "A", device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if variant not in ("A", "B"):
            raise ValueError(f"variant must be 'A' or 'B', got {variant!r}")
        if out_dim != 2 * dim:
            raise ValueError(f"the downsampling layer doubles the channels, got {dim} -> {out_dim}")
        hidden = int(mlp_ratio * out_dim)
        self.variant = variant
        self.dwconv = nn.Conv2d(dim, out_dim, kernel_size=7, stride=2, padding=3, groups=dim, **dd)
        self.norm = LayerNorm(out_dim, eps=1e-6, **dd)
        self.pwconv1 = nn.Linear(out_dim, hidden, **dd)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(hidden, out_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC for the LayerNorm and the Linear layers
        y = self.norm(x)
        shortcut = x if self.variant == "A" else y
        y = self.pwconv2(self.act(self.pwconv1(y)))
        return (shortcut + y).permute(0, 3, 1, 2)


class ConvNeXtDS(ConvNeXt):
    """ConvNeXt with RepNeXt-style downsampling layers between stages (the stem is untouched)."""

    def __init__(self, *args, ds_variant: str = "A", ds_mlp_ratio: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        for stage in list(self.stages)[1:]:
            norm, conv = stage.downsample
            if not (isinstance(norm, LayerNorm2d) and conv.stride == (2, 2)):
                raise RuntimeError(f"unexpected ConvNeXt downsample layout {stage.downsample}")
            stage.downsample = ConvNeXtDownsample(conv.in_channels, conv.out_channels, ds_mlp_ratio, ds_variant,
                                                  device=kwargs.get("device"), dtype=kwargs.get("dtype"))


class ScriptableRepVitClassifier(RepVitClassifier):
    """timm's RepVit head with ``distillation`` a TorchScript constant: without a distillation head, scripting
    the plain class compiles the branch that calls the absent ``head_dist`` and fails."""
    distillation: Final[bool]


class RepVitNoDist(RepVit):
    """RepVit without a distillation head (RepViT-M0.6 of the compact comparison), scriptable."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head.__class__ = ScriptableRepVitClassifier  # same state; only the class-level constant differs

    def reset_classifier(self, *args, **kwargs) -> None:
        super().reset_classifier(*args, **kwargs)
        self.head.__class__ = ScriptableRepVitClassifier


def _create_convnext_ds(variant: str, ds_variant: str, pretrained: bool = False, **kwargs) -> ConvNeXtDS:
    model_args = dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True, ds_variant=ds_variant)
    return build_model_with_cfg(
        ConvNeXtDS, variant, pretrained,
        pretrained_filter_fn=convnext_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **dict(model_args, **kwargs),
    )


def _create_repvit(variant: str, pretrained: bool = False, **kwargs) -> RepVit:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        RepVitNoDist, variant, pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "repvit_m0_6.untrained": _repvit_cfg(classifier="head.head.l"),
    "convnext_femto_ds_a.untrained": _convnext_cfg(test_input_size=(3, 288, 288), test_crop_pct=0.95),
    "convnext_femto_ds_b.untrained": _convnext_cfg(test_input_size=(3, 288, 288), test_crop_pct=0.95),
})


@register_model
def repvit_m0_6(pretrained: bool = False, **kwargs) -> RepVit:
    model_args = dict(embed_dim=(40, 80, 160, 320), depth=(1, 1, 8, 1), distillation=False)
    return _create_repvit("repvit_m0_6", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_femto_ds_a(pretrained: bool = False, **kwargs) -> ConvNeXtDS:
    return _create_convnext_ds("convnext_femto_ds_a", "A", pretrained, **kwargs)


@register_model
def convnext_femto_ds_b(pretrained: bool = False, **kwargs) -> ConvNeXtDS:
    return _create_convnext_ds("convnext_femto_ds_b", "B", pretrained, **kwargs)
