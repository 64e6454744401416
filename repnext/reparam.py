"""Structural reparameterization: every fold RepNeXt's inference forms are made of.

Three inference forms, selected by ``mode``:

* ``"official"``: what the official ``utils.replace_batchnorm`` gives. ConvNorm -> Conv2d, RepDWConvS -> one
  3x3, RepDWConvM -> one 7x7, the two NormLinear heads -> one Linear. The post-mixer BatchNorms and the
  1x11 -> 11x1 pair stay. Its state-dict keys are the official fused keys.
* ``"full"`` (default): ``official`` plus every BatchNorm folded. In a block the norm feeds only the 1x1
  channel mixer, so it folds forward into that conv (exact, identity chunk included); in a downsample the
  norm output also feeds the shortcut, so it folds backward into the depthwise kernels.
* ``"single_branch"``: ``full`` plus ChunkConv collapsed into one 11x11 depthwise conv and CopyConv into
  one 7x7 stride-2 depthwise conv with channel multiplier 2 (the README's "single-branch equivalent form").
  Two things keep it exact where a naive collapse is not: the bias of the 1x11 conv reaches the 11x1
  conv's zero padding differently at the top and bottom rows (a per-row correction, ``edge_correction``),
  and a grouped conv emits channels interleaved while CopyConv concatenates them (a channel reorder).
* ``"single_branch_plain"``: the same without the border correction: one plain conv per mixer, as the
  README draws it. Exact except in the 5 top and bottom rows of each 1x11 -> 11x1 chunk (its error is
  reported by the equivalence table, not hidden).

Fusing never touches the module it is given: every ``fuse`` returns new modules.
"""
from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import timm
import torch
import torch.nn.functional as F
from torch import nn

FUSE_MODES = ("official", "full", "single_branch", "single_branch_plain")


def check_mode(mode: str) -> str:
    if mode not in FUSE_MODES:
        raise ValueError(f"unknown fuse mode {mode!r}; expected one of {', '.join(FUSE_MODES)}")
    return mode


# --- tensor-level folds -------------------------------------------------------------------------------

def bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that ``bn(x) == x * scale + shift`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def geometry(conv: nn.Conv2d) -> dict:
    return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)


def make_conv(weight: torch.Tensor, bias: torch.Tensor, *, stride=1, padding=0, dilation=1, groups=1) -> nn.Conv2d:
    """A Conv2d holding ``weight`` and ``bias``."""
    conv = nn.Conv2d(
        weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=True, device=weight.device, dtype=weight.dtype,
    )
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


@torch.no_grad()
def fuse_conv_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """``conv`` followed by a per-channel affine map, as one conv."""
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return make_conv(weight, conv_bias(conv) * scale + shift, **geometry(conv))


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    return fuse_conv_affine(conv, *bn_affine(bn))


@torch.no_grad()
def fold_bn_into_next_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv(bn(x))`` as one conv; exact only for an unpadded 1x1 conv (no zero padding sees the shift)."""
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
        raise ValueError(f"a BatchNorm folds forward only into a dense unpadded 1x1 conv, got {conv}")
    scale, shift = bn_affine(bn)
    weight = conv.weight * scale.view(1, -1, 1, 1)
    bias = conv_bias(conv) + conv.weight.flatten(1) @ shift
    return make_conv(weight, bias, **geometry(conv))


@torch.no_grad()
def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    scale, shift = bn_affine(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device,
                      dtype=linear.weight.dtype)
    fused.weight.data.copy_(linear.weight * scale[None, :])
    fused.bias.data.copy_(linear.bias + linear.weight @ shift)
    return fused


def pad_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a (.., kh, kw) kernel to (size, size), centred (all branches use centred 'same' padding)."""
    kh, kw = weight.shape[-2], weight.shape[-1]
    ph, pw = (size - kh) // 2, (size - kw) // 2
    return F.pad(weight, [pw, size - kw - pw, ph, size - kh - ph])


def dilate_kernel(weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """A kernel with its dilation spelled out as zeros between taps."""
    if dilation == 1:
        return weight
    kh, kw = weight.shape[-2], weight.shape[-1]
    out = weight.new_zeros(weight.shape[0], weight.shape[1], (kh - 1) * dilation + 1, (kw - 1) * dilation + 1)
    out[:, :, ::dilation, ::dilation] = weight
    return out


def effective_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The conv's kernel with its dilation spelled out as zeros between taps."""
    dh, dw = conv.dilation
    if dh != dw:
        raise ValueError(f"expected the same dilation on both axes, got {conv.dilation}")
    return dilate_kernel(conv.weight, dh)


# The next three compose a multi-branch depthwise conv's one kernel from its convs' tensors. They take tensors,
# not modules, so that TorchScript compiles them: training computes the kernel on every forward pass (online
# reparameterization), scripted or not.

def conv_kernel(
        weight: torch.Tensor, bias: torch.Tensor | None, size: int, dilation: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One depthwise conv's kernel, dilation spelled out, centred in ``size`` x ``size``; its bias (or zeros)."""
    weight = pad_kernel(dilate_kernel(weight, dilation), size)
    return weight, bias if bias is not None else weight.new_zeros(weight.shape[0])


def pair_kernel(
        first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None, size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free 1xk conv (kernel ``first``) then a kx1 conv (``second``, ``bias``): the outer product of the
    kernels. Exact at the borders only because the first conv has no bias (the official S/M pairs have none)."""
    return conv_kernel(second * first, bias, size)


def sum_kernels(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel and bias of parallel paths that sum."""
    weight, bias = terms[0]
    for w, b in terms[1:]:
        weight = weight + w
        bias = bias + b
    return weight, bias


def branch_kernel(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of a depthwise branch, fused (a Conv2d) or not (a module with ``kernel()``)."""
    if isinstance(module, nn.Conv2d):
        return effective_weight(module), conv_bias(module)
    return module.kernel()


# --- single-branch collapse ----------------------------------------------------------------------------

class EdgeExactDWConv(nn.Module):
    """One large depthwise conv, plus the per-row bias correction that makes a collapsed 1xk -> kx1 pair
    exact: the first conv's bias ``b1`` is seen by the second conv's taps only inside the image, so near
    the top and bottom border the folded bias ``b1 * sum(w2)`` over-counts by ``b1 * (taps outside)``.
    """

    def __init__(self, conv: nn.Conv2d, edge_bias: torch.Tensor, edge_kernel: torch.Tensor):
        super().__init__()
        self.conv = conv
        self.register_buffer("edge_bias", edge_bias.detach().clone())  # b1 per channel (0: no pair)
        self.register_buffer("edge_kernel", edge_kernel.detach().clone())  # w2 per channel, (C, 1, k, 1)

    def edge_correction(self, height: int) -> torch.Tensor:
        k = self.edge_kernel.shape[2]
        ones = self.edge_kernel.new_ones(1, self.edge_kernel.shape[0], height, 1)
        inside = F.conv2d(ones, self.edge_kernel, padding=(k // 2, 0), groups=self.edge_kernel.shape[0])
        total = self.edge_kernel.sum((2, 3)).view(1, -1, 1, 1)
        return (inside - total) * self.edge_bias.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.edge_correction(x.shape[2])


class CatOrderDWConv(nn.Module):
    """A depthwise conv with channel multiplier m whose outputs are reordered from the grouped conv's
    interleaved order (c0a, c0b, c1a, ...) to CopyConv's concatenated order (c0a, c1a, ..., c0b, c1b, ...)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.unflatten(1, (self.conv.groups, -1)).transpose(1, 2).flatten(1, 2)


@torch.no_grad()
def collapse_chunk_conv(chunk_conv: nn.Module, edge_correction: bool = True) -> nn.Module:
    """ChunkConv (identity | S | M | 1x11 -> 11x1 on four channel chunks) as one 11x11 depthwise conv."""
    first, second = chunk_conv.conv_l
    size = first.kernel_size[1]
    w_s, b_s = branch_kernel(chunk_conv.conv_s)
    w_m, b_m = branch_kernel(chunk_conv.conv_m)
    w_l = second.weight * first.weight
    b1, b2 = conv_bias(first), conv_bias(second)
    b_l = b2 + b1 * second.weight.sum((1, 2, 3))
    w_i = torch.ones_like(w_s[..., :1, :1])  # identity chunk: a centred 1
    weight = torch.cat([pad_kernel(w, size) for w in (w_i, w_s, w_m, w_l)])
    bias = torch.cat((torch.zeros_like(b_s), b_s, b_m, b_l))
    conv = make_conv(weight, bias, padding=size // 2, groups=weight.shape[0])
    if not edge_correction:
        return conv
    n_plain = weight.shape[0] - b1.shape[0]
    edge_bias = torch.cat((b1.new_zeros(n_plain), b1))
    edge_kernel = torch.cat((second.weight.new_zeros(n_plain, 1, size, 1), second.weight))
    return EdgeExactDWConv(conv, edge_bias, edge_kernel)


@torch.no_grad()
def collapse_copy_conv(copy_conv: nn.Module) -> nn.Module:
    """CopyConv (cat of S and M, each stride 2 over all channels) as one 7x7 depthwise conv, multiplier 2."""
    w_s, b_s = branch_kernel(copy_conv.conv_s)
    w_m, b_m = branch_kernel(copy_conv.conv_m)
    size = w_m.shape[-1]
    weight = torch.stack((pad_kernel(w_s, size), w_m), dim=1).flatten(0, 1)  # grouped order: (c, branch)
    bias = torch.stack((b_s, b_m), dim=1).flatten()
    conv = make_conv(weight, bias, stride=copy_conv.conv_m.stride, padding=size // 2, groups=w_s.shape[0])
    return CatOrderDWConv(conv)


@torch.no_grad()
def fold_bn_into_copy_conv(copy_conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """BatchNorm after a (branch-fused) CopyConv, folded into its two depthwise convs."""
    scale, shift = bn_affine(bn)
    n = scale.shape[0] // 2
    out = copy.deepcopy(copy_conv)
    out.conv_s = fuse_conv_affine(copy_conv.conv_s, scale[:n], shift[:n])
    out.conv_m = fuse_conv_affine(copy_conv.conv_m, scale[n:], shift[n:])
    return out


# --- tree walking -------------------------------------------------------------------------------------

@runtime_checkable
class ModeFusable(Protocol):
    """A module whose ``fuse`` takes a mode: it declares the modes it knows in ``fuse_modes``. Any other
    ``fuse()`` has one inference form."""
    fuse_modes: tuple[str, ...]

    def fuse(self, mode: str = "full") -> nn.Module: ...


def fuse(model: nn.Module, mode: str = "full") -> nn.Module:
    """``model``'s inference form, a new model: ``fuse(mode)`` when it is ``ModeFusable``, else timm's walk
    (``reparameterize_model``: a copy whose children are fused with their own ``fuse()``/``reparameterize()``;
    a timm model's own ``fuse()`` may work in place)."""
    check_mode(mode)
    if isinstance(model, ModeFusable):
        return model.fuse(mode=mode)
    return timm.utils.reparameterize_model(model)


def fuse_children(module: nn.Module, mode: str = "full") -> nn.Module:
    """A copy of ``module`` whose children are replaced by their fused forms (recursively)."""
    check_mode(mode)
    fused = copy.deepcopy(module)

    def walk(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, ModeFusable):
                setattr(parent, name, child.fuse(mode=mode))
            elif hasattr(child, "fuse"):
                setattr(parent, name, child.fuse())
            else:
                walk(child)

    walk(fused)
    return fused
