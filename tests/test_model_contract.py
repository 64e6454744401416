"""timm's per-model contract, for every model this package registers."""
import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

from repnext.models import REGISTERED_MODELS, REPNEXT_FAMILY, REPNEXT_MODELS, SINGLE_BRANCH_MODELS, RepNeXt, is_repnext

SIZE = 64  # every model has stride 32: a 2x2 final map keeps the contract checks fast
# scripting and tracing the larger models takes minutes on a 2-core CPU
SCRIPT_FAST = ("repnext_m0", "repnext_m0e", "repnext_m1_nosrp", "repvit_m0_6", "convnext_femto_ds_a")
SCRIPTED = [name if name in SCRIPT_FAST else pytest.param(name, marks=pytest.mark.slow) for name in REGISTERED_MODELS]


@pytest.fixture(scope="module", params=REGISTERED_MODELS)
def name(request):
    return request.param


def test_registered_with_timm(name):
    assert name in timm.list_models()
    assert timm.is_model(name)


def test_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    # (a zero gradient can be genuine here: train-mode BatchNorm1d in the head cancels per-channel shifts)
    unreached = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unreached, f"no gradient reached {unreached[:5]}"


def test_default_cfg_names_existing_modules(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    for key in ("first_conv", "classifier", "input_size", "mean", "std", "crop_pct", "num_classes"):
        assert key in cfg, key
    first_conv = model.get_submodule(cfg["first_conv"])
    assert first_conv.in_channels == 3
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], tuple) else (cfg["classifier"],)
    for classifier in classifiers:
        assert model.get_submodule(classifier).out_features == cfg["num_classes"]


def test_features_only_shapes_and_reductions(name):
    model = timm.create_model(name, features_only=True).eval()
    feats = model(torch.randn(1, 3, SIZE, SIZE))
    info = model.feature_info
    assert len(feats) == len(info.channels()) == 4
    for f, chs, red in zip(feats, info.channels(), info.reduction()):
        assert f.shape == (1, chs, SIZE // red, SIZE // red)
    assert info.reduction() == [4, 8, 16, 32]


def test_features_only_out_indices(name):
    model = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    feats = model(torch.randn(1, 3, SIZE, SIZE))
    assert [f.shape[-1] for f in feats] == [SIZE // 8, SIZE // 32]


def test_forward_intermediates_matches_forward_features(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(intermediates) == 4
        only = model.forward_intermediates(x, indices=[2], intermediates_only=True)
    torch.testing.assert_close(only[0], intermediates[2])


def test_reset_classifier_and_pre_logits(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pre.shape == (2, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", REPNEXT_MODELS[:2] + SINGLE_BRANCH_MODELS[:1])
def test_grad_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    model(x).sum().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[n], rtol=1e-4, atol=1e-5, msg=n)


def test_distilled_training_returns_both_heads():
    model = timm.create_model("repnext_m0", num_classes=10, distillation=True).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    out, out_dist = model(x)
    assert out.shape == out_dist.shape == (2, 10)
    model.set_distilled_training(False)
    averaged = model(x)
    assert averaged.shape == (2, 10)
    model.eval()
    assert isinstance(model(x), torch.Tensor)


def test_is_repnext_names_exactly_the_models_repnext_builds(name):
    assert is_repnext(name) == (name in REPNEXT_FAMILY) == isinstance(timm.create_model(name), RepNeXt)
    assert is_repnext(timm.create_model(name)) == is_repnext(name) == is_repnext(f"{name}.dist_300e_in1k")


def test_is_repnext_is_false_for_timm_references_and_other_names():
    assert sorted(timm.list_models("repnext*")) == sorted(REPNEXT_FAMILY)
    assert not any(map(is_repnext, ("repvit_m1_0", "convnext_femto", "repnext", "repnext_m9", "my_repnext_m1")))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("repnext_m0", global_pool="max")
    with pytest.raises(ValueError, match="divisible by 4"):
        timm.create_model("repnext_m0", embed_dim=(42, 84, 168, 336))


def test_device_and_dtype_arguments(name):
    """As current timm model files: every parameter and buffer is made where, and as, asked."""
    model = timm.create_model(name, device="meta")
    assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {"meta"}
    model.reset_classifier(3)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model = timm.create_model(name, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --- timm's tests/test_models.py: torchscript and FX, for the training and the fused form ---------------

def create(name: str, form: str, **kwargs) -> torch.nn.Module:
    with timm.set_scriptable(True):
        model = timm.create_model(name, **kwargs).eval()
    if form == "train":
        return model
    return model.fuse() if isinstance(model, RepNeXt) else timm.utils.reparameterize_model(model)


def fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's ``_create_fx_model``: the traced graph returning the model's output node(s)."""
    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True,
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    eval_return_nodes, train_return_nodes = [eval_nodes[-1]], [train_nodes[-1]]
    if train:
        graph_nodes = list(reversed(NodePathTracer(**tracer_kwargs).trace(model).nodes))
        output_node_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_node_names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-graph_node_names.index(n)] for n in output_node_names]
    return create_feature_extractor(
        model, train_return_nodes=train_return_nodes, eval_return_nodes=eval_return_nodes,
        tracer_kwargs=tracer_kwargs,
    )


def outputs(out) -> torch.Tensor:
    return torch.cat(tuple(out.values())) if isinstance(out, dict) else out


FORMS = pytest.mark.parametrize("form", ["train", "fused"])


@FORMS
@pytest.mark.parametrize("name", SCRIPTED)
def test_forward_torchscript(name, form):
    model = create(name, form)
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = scripted(x)
        assert out.shape == (1, 1000) and not out.isnan().any()
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


@FORMS
@pytest.mark.parametrize("name", SCRIPTED)
def test_forward_fx(name, form):
    """The traced graph computes exactly the eager output (the fused form's in-place ops included)."""
    model = create(name, form)
    with torch.inference_mode():
        x = torch.randn(1, 3, SIZE, SIZE)
        out = model(x)
        traced = fx_model(model)
        fx_out = outputs(traced(x))
    assert torch.equal(fx_out, out)
    # traced without autograd, still no in-place op baked into the graph (may_overwrite sees the Proxy)
    assert not {str(n.target) for n in traced.graph.nodes} & {"add_", "aten.gelu_"}
    assert out.shape == (1, 1000) and not out.isnan().any()


@FORMS
@pytest.mark.parametrize("name", SCRIPTED)
def test_backward_fx(name, form):
    model = create(name, form, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    traced = fx_model(model, train=True)
    out = outputs(traced(torch.randn(2, 3, SIZE, SIZE)))
    out.mean().backward()
    missing = [n for n, p in traced.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    assert sum(p.grad.numel() for p in traced.parameters()) == num_params
    assert out.shape[-1] == 42 and not out.isnan().any()


@FORMS
@pytest.mark.parametrize("name", SCRIPTED)
def test_forward_fx_torchscript(name, form):
    model = create(name, form)
    scripted = torch.jit.script(fx_model(model))
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        out = outputs(scripted(x))
        assert out.shape == (1, 1000) and not out.isnan().any()
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
