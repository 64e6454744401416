"""Reparameterization: every inference form equals the training form in eval mode, and fusing is safe."""
import copy

import pytest
import timm
import torch
from torch import nn

from repnext import FUSE_MODES, reparam
from repnext.models import REPNEXT_MODELS, SINGLE_BRANCH_MODELS
from repnext.models.repnext import (
    ChunkConv,
    CopyConv,
    Downsample,
    InplaceGELU,
    MetaNeXtBlock,
    RepDWConvM,
    RepDWConvS,
)
from repnext.reparam import EdgeExactDWConv, ModeFusable

from .conftest import randomize_bn

EXACT_MODES = ("official", "full", "single_branch")
TOL = 1e-4  # the bound on logits; the observed errors are ~1e-6 (float32 rounding)


def randomize_params(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


@pytest.mark.parametrize("cls,stride", [(RepDWConvS, 1), (RepDWConvS, 2), (RepDWConvM, 1), (RepDWConvM, 2)])
@pytest.mark.parametrize("size", [(16, 16), (15, 17)])
def test_rep_dw_conv_folds_to_one_kernel(cls, stride, size):
    module = randomize_params(cls(8, stride)).eval()
    fused = module.fuse()
    assert isinstance(fused, nn.Conv2d) and fused.kernel_size == (module.kernel_size,) * 2
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(fused(x), module(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (11, 23), (4, 4)])
def test_chunk_conv_collapses_exactly_with_edge_correction(size):
    module = randomize_params(ChunkConv(16)).eval()
    x = torch.randn(2, 16, *size)
    exact = module.fuse("single_branch")
    assert isinstance(exact, EdgeExactDWConv) and exact.conv.kernel_size == (11, 11)
    torch.testing.assert_close(exact(x), module(x), rtol=0, atol=1e-5)
    # without the correction the 1x11 bias is wrong exactly in the rows the 11x1 conv pads
    plain = module.fuse("single_branch_plain")
    error = (plain(x) - module(x)).abs().amax(dim=(0, 1, 3))
    assert error[5:-5].max() < 1e-5 if size[0] > 10 else True
    assert error.max() > 1e-3


@pytest.mark.parametrize("size", [(16, 16), (15, 17)])
def test_copy_conv_collapses_to_one_grouped_7x7(size):
    module = randomize_params(CopyConv(8)).eval()
    collapsed = module.fuse("single_branch")
    assert collapsed.conv.kernel_size == (7, 7) and collapsed.conv.groups == 8
    assert collapsed.conv.out_channels == 16
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(collapsed(x), module(x), rtol=0, atol=1e-5)


def max_logit_error(name: str, mode: str, size: int = 224) -> float:
    model = randomize_bn(timm.create_model(name)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (model.fuse(mode)(x) - model(x)).abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("mode", EXACT_MODES)
@pytest.mark.parametrize("name", REPNEXT_MODELS + SINGLE_BRANCH_MODELS)
def test_fused_equals_unfused_at_224(name, mode):
    assert max_logit_error(name, mode) <= TOL


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_fused_equals_unfused_m0_quick(mode):
    assert max_logit_error("repnext_m0", mode, size=96) <= TOL


def test_timm_reparameterize_model_is_the_full_fuse():
    model = randomize_bn(timm.create_model("repnext_m1")).eval()
    x = torch.randn(2, 3, 96, 96)
    via_timm = timm.utils.reparameterize_model(model)
    via_method = model.fuse()
    assert via_timm.state_dict().keys() == via_method.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(via_timm(x), via_method(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(via_timm(x), model(x), rtol=0, atol=TOL)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in via_method.modules())


class Undeclared(nn.Module):
    """A ``fuse`` that takes a mode but declares none: called as ``fuse()`` (the signature is not looked at)."""

    def fuse(self, mode: str = "full") -> nn.Module:
        return nn.Identity() if mode == "official" else nn.ReLU()


class Declared(Undeclared):
    fuse_modes = FUSE_MODES


def test_fuse_gives_the_mode_to_modules_that_declare_it():
    assert isinstance(reparam.fuse(Declared(), "official"), nn.Identity)
    assert isinstance(reparam.fuse(Declared(), "full"), nn.ReLU)
    assert not isinstance(Undeclared(), ModeFusable)
    children = reparam.fuse_children(nn.Sequential(Declared(), Undeclared(), RepDWConvS(8)), "official")
    assert [type(m) for m in children] == [nn.Identity, nn.ReLU, nn.Conv2d]  # fuse(mode), fuse(), fuse()
    model = timm.create_model("repnext_m0")
    assert all(isinstance(m, ModeFusable) for m in (model, model.stages[1].downsample, model.stages[0].blocks[0]))
    assert [reparam.fuse(model, m).inference_form["mode"] for m in FUSE_MODES] == list(FUSE_MODES)
    with pytest.raises(ValueError, match="unknown fuse mode 'fast'; expected one of official, full"):
        reparam.fuse(model, "fast")


def test_fuse_of_a_timm_model_without_modes_is_timms_walk():
    model = randomize_bn(timm.create_model("repvit_m0_6")).eval()
    x = torch.randn(2, 3, 64, 64)
    fused = reparam.fuse(model, "official")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the caller's model is untouched
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=TOL)


@pytest.mark.parametrize("mode", FUSE_MODES)
def test_fusing_never_mutates_the_callers_model(mode):
    model = randomize_bn(timm.create_model("repnext_m0"))
    before = copy.deepcopy(model.state_dict())
    modules_before = list(model.modules())
    model.fuse(mode)
    timm.utils.reparameterize_model(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert list(model.modules()) == modules_before


@pytest.mark.parametrize("mode", FUSE_MODES)
def test_fusing_is_idempotent(mode):
    fused = randomize_bn(timm.create_model("repnext_m0")).eval().fuse(mode)
    again = fused.fuse(mode)
    assert fused.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in fused.state_dict().items())


def test_single_branch_form_has_one_conv_per_mixer():
    fused = timm.create_model("repnext_m0").eval().fuse("single_branch")
    dw = [m for m in fused.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert {m.kernel_size for m in dw} == {(11, 11), (7, 7)}
    assert len(dw) == 14 + 3  # 14 blocks, 3 downsamples


def test_collapsed_multi_branch_has_the_single_branch_models_size():
    collapsed = timm.create_model("repnext_m0").eval().fuse("single_branch")
    single = timm.create_model("repnext_m0e").eval().fuse("full")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(collapsed) == count(single)


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_features_and_intermediates_survive_fusing(mode):
    x = torch.randn(1, 3, 96, 96)
    net = randomize_bn(timm.create_model("repnext_m1", features_only=True, out_indices=(0, 2, 3))).eval()
    fused_net = timm.utils.reparameterize_model(net)
    assert not any(isinstance(m, ChunkConv) and isinstance(m.conv_s, RepDWConvS) for m in fused_net.modules())
    model = randomize_bn(timm.create_model("repnext_m1")).eval()
    fused = model.fuse(mode)
    with torch.no_grad():
        for a, b in zip(fused_net(x), net(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        for a, b in zip(fused.forward_intermediates(x)[1], model.forward_intermediates(x)[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match=r"'fastest'.*official, full, single_branch"):
        timm.create_model("repnext_m0").fuse("fastest")


def test_fuse_picks_the_memory_format_and_says_so():
    model = randomize_bn(timm.create_model("repnext_m0")).eval()
    fused = model.fuse()
    assert fused.inference_form == {"mode": "full", "channels_last": True, "inplace": True}
    assert fused.stem.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = model.fuse("official", channels_last=False)
    assert plain.inference_form == {"mode": "official", "channels_last": False, "inplace": True}
    assert plain.stem.stem[0].weight.is_contiguous()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_plain_mixer_ablation_fuses_exactly_into_repnext_m1s_inference_form(mode):
    """repnext_m1_nosrp (the SRP ablation) trains plain 3x3 / 7x7 depthwise convs where RepNeXt-M1 trains
    branches; fused, the two are the same network: same module types, same parameter shapes."""
    plain = randomize_bn(timm.create_model("repnext_m1_nosrp")).eval()
    assert not [m for m in plain.modules() if isinstance(m, (RepDWConvS, RepDWConvM))]
    assert isinstance(plain.stages[1].blocks[0].token_mixer.conv_s, nn.Conv2d)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = plain.fuse(mode)
        assert (fused(x) - plain(x)).abs().max().item() <= TOL
    shapes = lambda m: [tuple(p.shape) for p in m.parameters()]  # noqa: E731
    assert shapes(fused) == shapes(timm.create_model("repnext_m1").eval().fuse(mode))


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_in_place_inference_is_bit_identical_and_keeps_what_callers_hold(mode):
    model = randomize_bn(timm.create_model("repnext_m0")).eval()
    fast, plain = model.fuse(mode), model.fuse(mode, inplace=False)
    assert fast.inference_form["inplace"] and not plain.inference_form["inplace"]
    mixers = sum(isinstance(m, (MetaNeXtBlock, Downsample)) for m in fast.modules())
    assert sum(isinstance(m, InplaceGELU) for m in fast.modules()) == 1 + mixers  # the stem's, one per mixer
    assert not any(isinstance(m, InplaceGELU) for m in plain.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(fast(x), plain(x))
    with torch.no_grad():
        image = x.clone()
        held = fast.forward_intermediates(image, intermediates_only=True)  # what features_only returns
        assert torch.equal(image, x)
        for a, b in zip(held, plain.forward_intermediates(x, intermediates_only=True), strict=True):
            assert torch.equal(a, b)


def test_in_place_inference_steps_aside_for_autograd_and_tracing():
    model = randomize_bn(timm.create_model("repnext_m0")).eval()
    fast, plain = model.fuse(), model.fuse(inplace=False)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    fast(x).logsumexp(1).sum().backward()  # Grad-CAM's case: an in-place GELU would break the backward
    grads = [p.grad for p in fast.parameters()]
    plain(x).logsumexp(1).sum().backward()
    for a, b in zip(grads, (p.grad for p in plain.parameters()), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        traced = torch.jit.trace(fast, x.detach())  # what the Core ML and ONNX exports record
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::gelu" in kinds and not {k for k in kinds if k.endswith("_")}
