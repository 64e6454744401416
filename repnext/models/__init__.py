"""Model families; importing this registers every model with timm."""
from torch import nn

from .baselines import ConvNeXtDownsample, convnext_femto_ds_a, convnext_femto_ds_b, repvit_m0_6
from .repnext import RepNeXt, checkpoint_filter_fn, repnext_m1_nosrp

REPNEXT_MODELS = tuple(f"repnext_m{i}" for i in range(6))
SINGLE_BRANCH_MODELS = tuple(f"{name}e" for name in REPNEXT_MODELS)
ABLATION_MODELS = ("repnext_m1_nosrp",)  # the SRP ablation: plain depthwise mixers
BASELINE_MODELS = ("repvit_m0_6", "convnext_femto_ds_a", "convnext_femto_ds_b")
REPNEXT_FAMILY = REPNEXT_MODELS + SINGLE_BRANCH_MODELS + ABLATION_MODELS  # every model built by RepNeXt
REGISTERED_MODELS = REPNEXT_FAMILY + BASELINE_MODELS


def is_repnext(model: str | nn.Module) -> bool:
    """Whether ``model`` (a timm name, pretrained tag allowed, or a built model) is a RepNeXt: its forms, fuse
    modes and distillation head are this project's; any other model is a timm reference."""
    if isinstance(model, str):
        return model.split(".")[0] in REPNEXT_FAMILY
    return isinstance(model, RepNeXt)

__all__ = [
    "ABLATION_MODELS", "BASELINE_MODELS", "REGISTERED_MODELS", "REPNEXT_FAMILY", "REPNEXT_MODELS",
    "SINGLE_BRANCH_MODELS", "ConvNeXtDownsample", "RepNeXt", "checkpoint_filter_fn",
    "convnext_femto_ds_a", "convnext_femto_ds_b", "is_repnext", "repnext_m1_nosrp", "repvit_m0_6",
]
