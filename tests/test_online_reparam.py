"""Online reparameterization: the composed-kernel training path gives the branch-by-branch outputs and
gradients (the reference path), for every mixer type, stride and model size."""
import pytest
import timm
import torch

from repnext.models import REPNEXT_MODELS
from repnext.models.repnext import ChunkConv, CopyConv, RepDWConvM, RepDWConvS

from .conftest import randomize_bn


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def both_paths(module: torch.nn.Module, x: torch.Tensor):
    """(output, input grad, parameter grads) for the reference path, then the online path."""
    results = []
    for online in (False, True):
        for m in module.modules():
            if hasattr(m, "online_reparam"):
                m.online_reparam = online
        module.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in module.named_parameters()}))
    return results


def assert_same(reference, online, atol=1e-5):
    torch.testing.assert_close(online[0], reference[0], rtol=0, atol=atol)
    torch.testing.assert_close(online[1], reference[1], rtol=0, atol=atol)
    assert online[2].keys() == reference[2].keys()
    for name, grad in reference[2].items():
        assert online[2][name] is not None, f"no gradient reached {name}"
        torch.testing.assert_close(online[2][name], grad, rtol=0, atol=atol * max(1.0, grad.abs().max().item()),
                                   msg=name)


@pytest.mark.parametrize("cls", [RepDWConvS, RepDWConvM])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (13, 18)])
def test_rep_dw_conv(cls, stride, size):
    assert_same(*both_paths(randomized(cls(6, stride)), torch.randn(2, 6, *size)))


@pytest.mark.parametrize("size", [(16, 16), (13, 18)])
def test_chunk_conv(size):
    assert_same(*both_paths(randomized(ChunkConv(16)), torch.randn(2, 16, *size)))


@pytest.mark.parametrize("size", [(16, 16), (13, 18)])
def test_copy_conv(size):
    assert_same(*both_paths(randomized(CopyConv(6)), torch.randn(2, 6, *size)))


@pytest.mark.parametrize("name", REPNEXT_MODELS)
def test_whole_model_outputs_and_gradients(name):
    """Eval-mode BatchNorm keeps the comparison well conditioned (train-mode BN on a tiny batch amplifies
    float rounding); the composed path is what training runs."""
    model = randomize_bn(timm.create_model(name, num_classes=10)).eval()
    reference, online = both_paths(model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert_same(reference, online, atol=2e-5)


def test_online_is_the_default_and_switchable():
    model = timm.create_model("repnext_m0")
    flags = {m.online_reparam for m in model.modules() if hasattr(m, "online_reparam")}
    assert flags == {True}
    model.set_online_reparam(False)
    assert {m.online_reparam for m in model.modules() if hasattr(m, "online_reparam")} == {False}
