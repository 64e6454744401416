""" RepNeXt

Paper: `RepNeXt: A Fast Multi-Scale CNN using Structural Reparameterization`
    - https://arxiv.org/abs/2406.16004

Original implementation: https://github.com/suous/RepNeXt (Apache-2.0). Module names follow it, so the
released checkpoints load as they are (``pretrained_cfg_overlay=dict(file=PATH)``).

Besides the multi-branch RepNeXt-M0..M5 this file holds their single-branch "E" forms (M0E..M5E: one
11x11 depthwise mixer per block, one 7x7 stride-2 depthwise conv with channel multiplier 2 per downsample,
trained in that form) and the SRP ablation's ``repnext_m1_nosrp`` (plain depthwise convs in place of the
multi-branch ones). Every model reparameterizes for inference with ``model.fuse(mode)`` or
``timm.utils.reparameterize_model(model)``; the folds live in ``repnext.reparam``.

@misc{zhao2024repnext,
    title={RepNeXt: A Fast Multi-Scale CNN using Structural Reparameterization},
    author={Mingshu Zhao and Yi Luo and Yong Ouyang},
    year={2024},
    eprint={2406.16004},
    archivePrefix={arXiv},
    primaryClass={cs.CV}
}
"""
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_device_dtype, register_notrace_module, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq

from .. import reparam
from ..checkpoint import adapt_state_dict, read_checkpoint

__all__ = ["RepNeXt"]


def dw_conv(
        dim: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] | int = 1,
        bias: bool = True,
        dilation: int = 1,
        out_dim: int | None = None,
        device=None,
        dtype=None,
) -> nn.Conv2d:
    """Depthwise conv with centred 'same' padding."""
    padding = ((kernel_size[0] - 1) * dilation // 2, (kernel_size[1] - 1) * dilation // 2)
    return nn.Conv2d(dim, out_dim or dim, kernel_size, stride, padding, dilation, groups=dim, bias=bias,
                     device=device, dtype=dtype)


def may_overwrite(x: torch.Tensor) -> bool:
    """Whether a fused model may compute in place on ``x``: nothing records the graph (autograd would need the
    overwritten inputs; a tracer, jit's or FX's, would bake in-place ops into an export)."""
    if torch.jit.is_scripting():
        return not torch.is_grad_enabled()
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy))


class InplaceGELU(nn.GELU):
    """The fused model's GELU: it overwrites its input (always a conv's fresh output) when ``may_overwrite``.
    The same function; on CPU it saves allocating, and page-faulting, one activation-sized buffer per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if may_overwrite(x):
            return torch.ops.aten.gelu_(x, approximate=self.approximate)
        return F.gelu(x, approximate=self.approximate)


class ConvNorm(nn.Module):
    """Conv (no bias) + BatchNorm; folds to one conv."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 1, stride: int = 1, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, kernel_size // 2, bias=False, **dd)
        self.norm = nn.BatchNorm2d(out_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def fuse(self) -> nn.Conv2d:
        return reparam.fuse_conv_bn(self.conv, self.norm)


class RepDWConv(nn.Module):
    """Depthwise paths that sum; a path is one conv or a 1xk -> kx1 pair. Subclasses define the paths twice,
    as a kernel (``kernel``) and as convs run one by one (``branches``), both in TorchScript-able code.

    With ``online_reparam`` (the default) the forward pass computes the paths' single kernel from their
    parameters and runs one conv: the same function and gradients, a fraction of the work. Without it,
    every path runs on its own (the reference the tests compare against). FX treats the module as a leaf
    (``register_notrace_module``): the kernel's composition is not a graph worth tracing.
    """

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.online_reparam = True

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.online_reparam:
            weight, bias = self.kernel()
            return F.conv2d(x, weight, bias, self.stride, self.kernel_size // 2, 1, weight.shape[0])
        return self.branches(x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        weight, bias = self.kernel()
        return reparam.make_conv(weight, bias, stride=self.stride, padding=self.kernel_size // 2,
                                 groups=weight.shape[0])


@register_notrace_module
class RepDWConvS(RepDWConv):
    """Small-kernel multi-branch depthwise conv: 3x3 + 1x3 + 3x1 + dilated 2x2, folds to one 3x3.

    At stride 2 the 1x3 and 3x1 run in sequence, each striding its own axis, without biases.
    """

    def __init__(self, dim: int, stride: int = 1, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__(3, stride)
        self.conv_3_3 = dw_conv(dim, (3, 3), stride, **dd)
        self.conv_3_w = dw_conv(dim, (1, 3), (1, stride), bias=stride == 1, **dd)
        self.conv_3_h = dw_conv(dim, (3, 1), (stride, 1), bias=stride == 1, **dd)
        self.conv_2_2 = dw_conv(dim, (2, 2), stride, dilation=2, **dd)

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.kernel_size
        terms = [reparam.conv_kernel(self.conv_3_3.weight, self.conv_3_3.bias, k)]
        if self.stride == 1:
            terms.append(reparam.conv_kernel(self.conv_3_w.weight, self.conv_3_w.bias, k))
            terms.append(reparam.conv_kernel(self.conv_3_h.weight, self.conv_3_h.bias, k))
        else:
            terms.append(reparam.pair_kernel(self.conv_3_w.weight, self.conv_3_h.weight, self.conv_3_h.bias, k))
        terms.append(reparam.conv_kernel(self.conv_2_2.weight, self.conv_2_2.bias, k, 2))
        return reparam.sum_kernels(terms)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.conv_3_3(x) + self.conv_3_w(x) + self.conv_3_h(x) + self.conv_2_2(x)
        return self.conv_3_3(x) + self.conv_3_h(self.conv_3_w(x)) + self.conv_2_2(x)


@register_notrace_module
class RepDWConvM(RepDWConv):
    """Medium-kernel ("fovea") multi-branch depthwise conv: 7x7 + 5x3 + 3x5 + (1x7 -> 7x1) + (1x5 -> 5x1),
    folds to one 7x7."""

    def __init__(self, dim: int, stride: int = 1, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__(7, stride)
        self.conv_7_7 = dw_conv(dim, (7, 7), stride, **dd)
        self.conv_5_3 = dw_conv(dim, (5, 3), stride, **dd)
        self.conv_3_5 = dw_conv(dim, (3, 5), stride, **dd)
        self.conv_7_w = dw_conv(dim, (1, 7), (1, stride), bias=False, **dd)
        self.conv_7_h = dw_conv(dim, (7, 1), (stride, 1), bias=False, **dd)
        self.conv_5_w = dw_conv(dim, (1, 5), (1, stride), bias=False, **dd)
        self.conv_5_h = dw_conv(dim, (5, 1), (stride, 1), bias=False, **dd)

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.kernel_size
        return reparam.sum_kernels([
            reparam.conv_kernel(self.conv_7_7.weight, self.conv_7_7.bias, k),
            reparam.conv_kernel(self.conv_5_3.weight, self.conv_5_3.bias, k),
            reparam.conv_kernel(self.conv_3_5.weight, self.conv_3_5.bias, k),
            reparam.pair_kernel(self.conv_7_w.weight, self.conv_7_h.weight, self.conv_7_h.bias, k),
            reparam.pair_kernel(self.conv_5_w.weight, self.conv_5_h.weight, self.conv_5_h.bias, k),
        ])

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv_7_7(x) + self.conv_5_3(x) + self.conv_3_5(x)
                + self.conv_7_h(self.conv_7_w(x)) + self.conv_5_h(self.conv_5_w(x)))


class ChunkConv(nn.Module):
    """Block token mixer: four channel chunks through identity | S | M | 1x11 -> 11x1, concatenated.

    ``srp=False`` (the SRP ablation) makes S and M plain 3x3 and 7x7 depthwise convs: the inference form is
    the same network, only the training-time branches are gone.
    """
    fuse_modes = reparam.FUSE_MODES  # fuse(mode) takes each (reparam.ModeFusable)

    def __init__(self, dim: int, srp: bool = True, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if dim % 4:
            raise ValueError(f"ChunkConv needs a channel count divisible by 4, got {dim}")
        chunk = dim // 4
        self.conv_i = nn.Identity()
        self.conv_s = RepDWConvS(chunk, **dd) if srp else dw_conv(chunk, (3, 3), **dd)
        self.conv_m = RepDWConvM(chunk, **dd) if srp else dw_conv(chunk, (7, 7), **dd)
        self.conv_l = nn.Sequential(dw_conv(chunk, (1, 11), **dd), dw_conv(chunk, (11, 1), **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.chunk(x, 4, dim=1)  # indexed, not unpacked: FX cannot iterate a Proxy
        return torch.cat(
            (self.conv_i(chunks[0]), self.conv_s(chunks[1]), self.conv_m(chunks[2]), self.conv_l(chunks[3])), dim=1,
        )

    def fuse(self, mode: str = "full") -> nn.Module:
        if mode.startswith("single_branch"):
            return reparam.collapse_chunk_conv(self, edge_correction=mode == "single_branch")
        return reparam.fuse_children(self, mode)


class CopyConv(nn.Module):
    """Downsample token mixer: S and M (stride 2) each see all channels; outputs concatenated (C -> 2C)."""
    fuse_modes = reparam.FUSE_MODES  # fuse(mode) takes each (reparam.ModeFusable)

    def __init__(self, dim: int, stride: int = 2, srp: bool = True, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.conv_s = RepDWConvS(dim, stride, **dd) if srp else dw_conv(dim, (3, 3), stride, **dd)
        self.conv_m = RepDWConvM(dim, stride, **dd) if srp else dw_conv(dim, (7, 7), stride, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.conv_s(x), self.conv_m(x)), dim=1)

    def fuse(self, mode: str = "full") -> nn.Module:
        if mode.startswith("single_branch"):
            return reparam.collapse_copy_conv(self)
        return reparam.fuse_children(self, mode)


def channel_mixer(dim: int, mlp_ratio: float, device=None, dtype=None) -> nn.Sequential:
    dd = {"device": device, "dtype": dtype}
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(ConvNorm(dim, hidden, **dd), nn.GELU(), ConvNorm(hidden, dim, **dd))


class MetaNeXtBlock(nn.Module):
    """``x + channel_mixer(norm(token_mixer(x)))``. ``inplace`` (set by ``RepNeXt.fuse``): the residual is added
    into the mixer's fresh output when ``may_overwrite``."""
    fuse_modes = reparam.FUSE_MODES  # fuse(mode) takes each (reparam.ModeFusable)

    def __init__(self, dim: int, mlp_ratio: float = 2.0, single_branch: bool = False, srp: bool = True,
                 device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.inplace = False  # an instance attribute, so that TorchScript sees it
        self.token_mixer = dw_conv(dim, (11, 11), **dd) if single_branch else ChunkConv(dim, srp, **dd)
        self.norm = nn.BatchNorm2d(dim, **dd)
        self.channel_mixer = channel_mixer(dim, mlp_ratio, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.channel_mixer(self.norm(self.token_mixer(x)))
        return y.add_(x) if self.inplace and may_overwrite(y) else x + y

    def fuse(self, mode: str = "full") -> "MetaNeXtBlock":
        fused = reparam.fuse_children(self, mode)
        if mode != "official" and isinstance(fused.norm, nn.BatchNorm2d):
            # the norm feeds only the 1x1 channel mixer (not the shortcut): fold it forward, exactly
            fused.channel_mixer[0] = reparam.fold_bn_into_next_conv(fused.norm, fused.channel_mixer[0])
            fused.norm = nn.Identity()
        return fused


class Downsample(nn.Module):
    """``y = norm(token_mixer(x)); y + channel_mixer(y)``: the shortcut skips only the channel mixer, so the
    norm folds into the token mixer's kernels. ``inplace``: as in ``MetaNeXtBlock``."""
    fuse_modes = reparam.FUSE_MODES  # fuse(mode) takes each (reparam.ModeFusable)

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 2.0, single_branch: bool = False,
                 srp: bool = True, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if out_dim != 2 * dim:
            raise ValueError(f"RepNeXt downsampling doubles the channels, got {dim} -> {out_dim}")
        self.inplace = False
        self.token_mixer = (
            dw_conv(dim, (7, 7), 2, out_dim=out_dim, **dd) if single_branch else CopyConv(dim, srp=srp, **dd)
        )
        self.norm = nn.BatchNorm2d(out_dim, **dd)
        self.channel_mixer = channel_mixer(out_dim, mlp_ratio, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.token_mixer(x))
        y = self.channel_mixer(x)
        return y.add_(x) if self.inplace and may_overwrite(y) else x + y

    def fuse(self, mode: str = "full") -> "Downsample":
        fused = reparam.fuse_children(self, "official" if mode == "official" else "full")
        if mode == "official" or not isinstance(fused.norm, nn.BatchNorm2d):
            return fused
        if isinstance(fused.token_mixer, nn.Conv2d):
            fused.token_mixer = reparam.fuse_conv_bn(fused.token_mixer, fused.norm)
        else:
            fused.token_mixer = reparam.fold_bn_into_copy_conv(fused.token_mixer, fused.norm)
        fused.norm = nn.Identity()
        if mode.startswith("single_branch") and isinstance(fused.token_mixer, CopyConv):
            fused.token_mixer = reparam.collapse_copy_conv(fused.token_mixer)
        return fused


class Stem(nn.Module):
    """Two 3x3 stride-2 ConvNorms with a GELU between: stride 4."""

    def __init__(self, in_chans: int, out_dim: int, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.stride = 4
        self.stem = nn.Sequential(
            ConvNorm(in_chans, out_dim // 2, 3, 2, **dd), nn.GELU(), ConvNorm(out_dim // 2, out_dim, 3, 2, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


class NormLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, **dd)
        self.linear = nn.Linear(in_dim, out_dim, **dd)
        trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))

    def fuse(self) -> nn.Linear:
        return reparam.fuse_bn_linear(self.norm, self.linear)


class Classifier(nn.Module):
    """Two heads (class and distillation), always built, as upstream. Distilled training returns both;
    otherwise (and always in eval) their mean, which is what fuses into one Linear."""

    def __init__(self, dim: int, num_classes: int, distillation: bool = False, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_classes = num_classes
        self.distilled_training = distillation
        self.head = NormLinear(dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head_dist = NormLinear(dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor):  # Tensor, or (Tensor, Tensor) in Python; TorchScript infers Tensor
        x, x_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist
        return (x + x_dist) / 2

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        if self.num_classes == 0:
            return nn.Identity()
        head, head_dist = self.head.fuse(), self.head_dist.fuse()
        head.weight.data = (head.weight + head_dist.weight) / 2
        head.bias.data = (head.bias + head_dist.bias) / 2
        return head


class RepNeXtStage(nn.Module):
    def __init__(
            self,
            in_dim: int,
            out_dim: int,
            depth: int,
            mlp_ratio: float = 2.0,
            downsample: bool = True,
            single_branch: bool = False,
            srp: bool = True,
            device=None,
            dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if downsample:
            self.downsample = Downsample(in_dim, out_dim, mlp_ratio, single_branch, srp, **dd)
        else:
            assert in_dim == out_dim
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *[MetaNeXtBlock(out_dim, mlp_ratio, single_branch, srp, **dd) for _ in range(depth)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class RepNeXt(nn.Module):
    """RepNeXt: stem (stride 4), four stages of MetaNeXt blocks with Downsample layers between, two heads."""
    fuse_modes = reparam.FUSE_MODES  # fuse(mode) takes each (reparam.ModeFusable)

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: Sequence[int] = (48, 96, 192, 384),
            depth: Sequence[int] = (3, 3, 15, 2),
            mlp_ratio: float = 2.0,
            global_pool: str = "avg",
            single_branch: bool = False,
            srp: bool = True,
            distillation: bool = False,
            drop_rate: float = 0.0,
            device=None,
            dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
        if len(embed_dim) != len(depth):
            raise ValueError(f"embed_dim {tuple(embed_dim)} and depth {tuple(depth)} differ in length")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, embed_dim[0], **dd)
        stride = self.stem.stride
        self.feature_info = []
        stages = []
        in_dim = embed_dim[0]
        for i, (dim, n) in enumerate(zip(embed_dim, depth)):
            stages.append(RepNeXtStage(in_dim, dim, n, mlp_ratio, downsample=i > 0, single_branch=single_branch,
                                       srp=srp, **dd))
            stride *= 2 if i > 0 else 1
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}"))
            in_dim = dim
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = Classifier(self.num_features, num_classes, distillation, **dd)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, distillation: bool = False,
                         device=None, dtype=None):
        dd = get_device_dtype(self, device=device, dtype=dtype)
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.global_pool = global_pool
        self.head = Classifier(self.num_features, num_classes, distillation, **dd)
        self.head.train(self.training)

    @torch.jit.ignore
    def set_online_reparam(self, enable: bool = True) -> None:
        """Compose every multi-branch mixer's kernel on the fly (default) or run branch by branch."""
        for m in self.modules():
            if isinstance(m, RepDWConv):
                m.online_reparam = enable

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        if not isinstance(self.head, Classifier):
            raise RuntimeError("distilled training needs the two-headed classifier; this model is fused")
        self.head.distilled_training = enable

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward features that returns intermediates.

        Args:
            x: Input image tensor
            indices: Take last n stages if int, all if None, select matching indices if sequence
            norm: Apply norm layer to compatible intermediates (RepNeXt has no final norm)
            stop_early: Stop iterating over stages when last desired intermediate hit
            output_fmt: Shape of intermediate feature outputs (NCHW only)
            intermediates_only: Only return intermediate features
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Prune layers not required for specified intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def fuse(self, mode: str = "full", channels_last: bool | None = None, inplace: bool = True) -> "RepNeXt":
        """The inference form (a new model; ``self`` is untouched). Modes: see ``repnext.reparam``.

        Two choices of execution, both exact, measured by ``python -m repnext.bench`` (repnext_m1, batch 16,
        this project's 2-core CPU):

        * ``channels_last=None`` picks the faster memory format: channels_last on CPU (oneDNN's depthwise
          kernels; 1.07-1.2x at batch 16, 1.2x at batch 1) and on CUDA.
        * ``inplace=True``: without autograd or a tracer, GELUs and residual adds write into the buffer their
          conv just produced (``may_overwrite``); 1.0-1.1x at batch 16 on CPU, where a fresh activation-sized
          buffer costs page faults, nothing at batch 1. A forward hook that keeps a channel mixer's output
          under ``no_grad`` sees it with the residual added: pass ``inplace=False`` then.

        The choices are recorded in ``fused.inference_form``.
        """
        fused = reparam.fuse_children(self, mode)
        channels_last = True if channels_last is None else channels_last
        if channels_last:
            fused = fused.to(memory_format=torch.channels_last)
        if inplace:
            compute_in_place(fused)
        fused.inference_form = {"mode": mode, "channels_last": channels_last, "inplace": inplace}
        return fused

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str | Path) -> None:
        """timm's ``custom_load`` hook: a released or own checkpoint file, loaded safely and strictly."""
        state_dict = read_checkpoint(checkpoint_path)
        state_dict = checkpoint_filter_fn(state_dict, self)
        self.load_state_dict(state_dict, strict=False)  # checkpoint_filter_fn has checked every key


def compute_in_place(model: nn.Module) -> None:
    """Switch a fused model's residual adds, and its GELUs that follow a conv, to in-place (see ``fuse``)."""
    for module in model.modules():
        if isinstance(module, (MetaNeXtBlock, Downsample)):
            module.inplace = True
        if isinstance(module, nn.Sequential):
            for i in range(1, len(module)):
                if type(module[i]) is nn.GELU and isinstance(module[i - 1], nn.Conv2d):
                    module[i] = InplaceGELU(module[i].approximate)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Official checkpoint (any container) -> this model's state dict; a mismatch raises, naming the keys.

    Heads whose class count differs from the model's are dropped (the model keeps its fresh heads).
    """
    return adapt_state_dict(
        state_dict, model, classifiers=("head.head.linear", "head.head_dist.linear"),
        first_conv="stem.stem.0.conv",
    )


def _create_repnext(variant: str, pretrained: bool = False, **kwargs) -> RepNeXt:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if overlay.get("file"):
        # timm resets custom_load for a user file; keep ours: official files carry argparse Namespaces
        # (timm's weights_only load refuses them) and EMA weights (timm would prefer them)
        overlay.setdefault("custom_load", True)
    kwargs["pretrained_cfg_overlay"] = overlay
    return build_model_with_cfg(
        RepNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


_RELEASE = "https://github.com/suous/RepNeXt/releases/download/v1.0/"


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,  # the RepViT/DeiT recipe evaluates at Resize 256 -> CenterCrop 224
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.stem.0.conv",
        "classifier": ("head.head.linear", "head.head_dist.linear"),
        "custom_load": True,  # safe, strict loading of the official containers: RepNeXt.load_pretrained
        "license": "apache-2.0",
        "paper_ids": "arXiv:2406.16004",
        "paper_name": "RepNeXt: A Fast Multi-Scale CNN using Structural Reparameterization",
        "origin_url": "https://github.com/suous/RepNeXt",
        **kwargs,
    }


def _starnet_cfg(file_name: str) -> dict:
    # the StarNet/MogaNet recipe evaluates at crop_pct 0.9 (Resize 248 -> CenterCrop 224)
    return _cfg(url=_RELEASE + file_name, crop_pct=0.9)


default_cfgs = generate_default_cfgs({
    **{
        f"repnext_m{i}.dist_300e_in1k": _cfg(url=_RELEASE + f"repnext_m{i}_distill_300e.pth")
        for i in range(6)
    },
    **{
        f"repnext_m{i}.starnet_300e_in1k": _starnet_cfg(f"repnext_m{i}_sz224_4xbs512_ep300.pth.tar")
        for i in range(3)
    },
    **{
        f"repnext_m{i}.starnet_dist_300e_in1k": _starnet_cfg(f"repnext_m{i}_sz224_4xbs256_ep300_distill.pth.tar")
        for i in range(3)
    },
    # the single-branch forms and the SRP ablation's plain model have no released weights
    **{f"repnext_m{i}e.untrained": _cfg() for i in range(6)},
    "repnext_m1_nosrp.untrained": _cfg(),
})


_ARCHS = {
    "m0": dict(embed_dim=(40, 80, 160, 320), depth=(2, 2, 9, 1)),
    "m1": dict(embed_dim=(48, 96, 192, 384), depth=(3, 3, 15, 2)),
    "m2": dict(embed_dim=(56, 112, 224, 448), depth=(3, 3, 15, 2)),
    "m3": dict(embed_dim=(64, 128, 256, 512), depth=(3, 3, 13, 2)),
    "m4": dict(embed_dim=(64, 128, 256, 512), depth=(5, 5, 25, 4)),
    "m5": dict(embed_dim=(80, 160, 320, 640), depth=(7, 7, 35, 2)),
}


def _variant(size: str, single_branch: bool, pretrained: bool, kwargs: dict, srp: bool = True) -> RepNeXt:
    name = f"repnext_{size}{'e' if single_branch else ''}{'' if srp else '_nosrp'}"
    model_args = dict(_ARCHS[size], single_branch=single_branch, srp=srp)
    return _create_repnext(name, pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def repnext_m0(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m0", False, pretrained, kwargs)


@register_model
def repnext_m1(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m1", False, pretrained, kwargs)


@register_model
def repnext_m2(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m2", False, pretrained, kwargs)


@register_model
def repnext_m3(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m3", False, pretrained, kwargs)


@register_model
def repnext_m4(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m4", False, pretrained, kwargs)


@register_model
def repnext_m5(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m5", False, pretrained, kwargs)


@register_model
def repnext_m0e(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m0", True, pretrained, kwargs)


@register_model
def repnext_m1e(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m1", True, pretrained, kwargs)


@register_model
def repnext_m2e(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m2", True, pretrained, kwargs)


@register_model
def repnext_m3e(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m3", True, pretrained, kwargs)


@register_model
def repnext_m4e(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m4", True, pretrained, kwargs)


@register_model
def repnext_m5e(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _variant("m5", True, pretrained, kwargs)


@register_model
def repnext_m1_nosrp(pretrained: bool = False, **kwargs) -> RepNeXt:
    """The SRP ablation: RepNeXt-M1 with plain 3x3 / 7x7 depthwise convs where RepDWConvS / RepDWConvM
    train several branches; its inference form is RepNeXt-M1's."""
    return _variant("m1", False, pretrained, kwargs, srp=False)
