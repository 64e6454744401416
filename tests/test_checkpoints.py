"""State-dict compatibility with the official releases, and safe, strict loading of checkpoint files."""
import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file

from repnext.checkpoint import CheckpointError, read_checkpoint, require_fit
from repnext.models import REPNEXT_MODELS

from .conftest import randomize_bn


@pytest.mark.parametrize("name", REPNEXT_MODELS)
def test_training_form_keys_and_shapes_equal_the_release(name, manifest):
    expected = [(k, tuple(shape)) for k, shape, _ in manifest[name]["keys"]]
    sd = timm.create_model(name).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == manifest[name]["num_params"]


@pytest.mark.parametrize("name", REPNEXT_MODELS)
def test_official_fuse_keys_and_shapes_equal_the_official_fuse(name, manifest):
    fused = timm.create_model(name).eval().fuse("official")
    expected = [(k, tuple(shape)) for k, shape in manifest[name]["fused_keys"]]
    assert [(k, tuple(v.shape)) for k, v in fused.state_dict().items()] == expected
    assert sum(p.numel() for p in fused.parameters()) == manifest[name]["fused_num_params"]


def official_state_dict(manifest: dict, name: str, seed: int = 0) -> dict:
    """A state dict built from the release manifest alone (random values, official keys/shapes/dtypes)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype in manifest[name]["keys"]:
        if dtype == "int64":
            sd[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


def load(name, path, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


@pytest.mark.parametrize("container", ["model", "state_dict", "bare", "safetensors"])
def test_release_containers_load_offline(container, manifest, tmp_path):
    sd = official_state_dict(manifest, "repnext_m0")
    ema = official_state_dict(manifest, "repnext_m0", seed=1)
    if container == "safetensors":
        path = tmp_path / "m0.safetensors"
        save_file({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, str(path))
    else:
        path = tmp_path / "m0.pth"
        # what main.py saves: the weights plus EMA weights, optimizer state and the argparse Namespace
        obj = {"model": sd, "model_ema": ema, "epoch": 299, "args": argparse.Namespace(model="repnext_m0", lr=4e-3)}
        obj = {"state_dict": sd, "epoch": 309} if container == "state_dict" else obj
        torch.save(sd if container == "bare" else obj, path)
    model = load("repnext_m0", path)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, sd[key], msg=key)  # the non-EMA weights, as the paper evaluates


def test_other_num_classes_drops_both_heads_only(manifest, tmp_path):
    sd = official_state_dict(manifest, "repnext_m1")
    torch.save({"model": sd}, tmp_path / "m1.pth")
    fresh = timm.create_model("repnext_m1", num_classes=10)
    model = load("repnext_m1", tmp_path / "m1.pth", num_classes=10)
    assert model.head.head.linear.weight.shape == (10, 384)
    for key, value in model.state_dict().items():
        if ".linear." in key:
            assert value.shape == fresh.state_dict()[key].shape
        else:
            torch.testing.assert_close(value, sd[key], msg=key)


def test_headless_model_loads_backbone(manifest, tmp_path):
    torch.save({"model": official_state_dict(manifest, "repnext_m0")}, tmp_path / "m0.pth")
    model = load("repnext_m0", tmp_path / "m0.pth", num_classes=0).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 320)


def test_released_weights_give_identical_logits(manifest, tmp_path):
    """Weights saved by one model load into a fresh one bit for bit (eval logits equal)."""
    source = randomize_bn(timm.create_model("repnext_m0")).eval()
    torch.save({"model": source.state_dict()}, tmp_path / "m0.pth")
    model = load("repnext_m0", tmp_path / "m0.pth").eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_missing_and_unexpected_keys_are_named(manifest, tmp_path):
    sd = official_state_dict(manifest, "repnext_m0")
    del sd["stages.2.blocks.3.token_mixer.conv_m.conv_5_3.weight"]
    sd["stages.9.extra.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load("repnext_m0", tmp_path / "bad.pth")
    message = str(err.value)
    assert "stages.2.blocks.3.token_mixer.conv_m.conv_5_3.weight" in message
    assert "stages.9.extra.weight" in message
    assert "repnext_m0" in message


def test_wrong_model_size_is_a_shape_error(manifest, tmp_path):
    torch.save({"model": official_state_dict(manifest, "repnext_m1")}, tmp_path / "m1.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load("repnext_m2", tmp_path / "m1.pth")


def test_require_fit_counts_and_summarises_each_kind_of_misfit():
    require_fit("m", {"missing keys": set(), "unexpected keys": []}, [])  # all fits: no error
    with pytest.raises(CheckpointError) as err:
        require_fit("m", {"missing keys": [f"k{i}" for i in range(9, -1, -1)], "unexpected keys": []},
                    [f"s{i} (1,) vs (2,)" for i in range(5)])
    assert str(err.value) == ("checkpoint does not fit m: missing keys (10): k0, k1, k2, k3, k4, k5, k6, k7 (+2 more); "
                              "shape mismatches (5): s0 (1,) vs (2,), s1 (1,) vs (2,), s2 (1,) vs (2,), "
                              "s3 (1,) vs (2,) (+1 more)")


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint that loads with weights_only=True"):
        read_checkpoint(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"not a valid \.safetensors"):
        read_checkpoint(broken)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        read_checkpoint(tmp_path / "list.pth")


def test_arbitrary_pickles_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed!",))

    torch.save({"model": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pth")


def test_torchscript_archive_is_recognised(tmp_path):
    scripted = torch.jit.trace(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8))
    scripted.save(str(tmp_path / "m_fused.pt"))
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_checkpoint(tmp_path / "m_fused.pt")


def test_ema_weights_on_request(manifest, tmp_path):
    sd, ema = official_state_dict(manifest, "repnext_m0"), official_state_dict(manifest, "repnext_m0", 1)
    torch.save({"model": sd, "model_ema": ema}, tmp_path / "m0.pth")
    key = "stem.stem.0.conv.weight"
    assert torch.equal(read_checkpoint(tmp_path / "m0.pth")[key], sd[key])
    assert torch.equal(read_checkpoint(tmp_path / "m0.pth", use_ema=True)[key], ema[key])
