"""Model families; importing this registers every model with timm."""
from .baselines import ConvNeXtDownsample, convnext_femto_ds_a, convnext_femto_ds_b, repvit_m0_6
from .repnext import RepNeXt, checkpoint_filter_fn, repnext_m1_nosrp

REPNEXT_MODELS = tuple(f"repnext_m{i}" for i in range(6))
SINGLE_BRANCH_MODELS = tuple(f"{name}e" for name in REPNEXT_MODELS)
ABLATION_MODELS = ("repnext_m1_nosrp",)  # the SRP ablation: plain depthwise mixers
BASELINE_MODELS = ("repvit_m0_6", "convnext_femto_ds_a", "convnext_femto_ds_b")
REGISTERED_MODELS = REPNEXT_MODELS + SINGLE_BRANCH_MODELS + ABLATION_MODELS + BASELINE_MODELS

__all__ = [
    "ABLATION_MODELS", "BASELINE_MODELS", "REGISTERED_MODELS", "REPNEXT_MODELS", "SINGLE_BRANCH_MODELS",
    "ConvNeXtDownsample", "RepNeXt", "checkpoint_filter_fn",
    "convnext_femto_ds_a", "convnext_femto_ds_b", "repnext_m1_nosrp", "repvit_m0_6",
]
