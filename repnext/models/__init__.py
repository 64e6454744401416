"""Model families; importing this registers every model with timm."""
from .baselines import ConvNeXtDownsample, convnext_femto_ds_a, convnext_femto_ds_b, repvit_m0_6
from .repnext import RepNeXt, checkpoint_filter_fn

REPNEXT_MODELS = tuple(f"repnext_m{i}" for i in range(6))
SINGLE_BRANCH_MODELS = tuple(f"{name}e" for name in REPNEXT_MODELS)
BASELINE_MODELS = ("repvit_m0_6", "convnext_femto_ds_a", "convnext_femto_ds_b")
REGISTERED_MODELS = REPNEXT_MODELS + SINGLE_BRANCH_MODELS + BASELINE_MODELS

__all__ = [
    "BASELINE_MODELS", "REGISTERED_MODELS", "REPNEXT_MODELS", "SINGLE_BRANCH_MODELS",
    "ConvNeXtDownsample", "RepNeXt", "checkpoint_filter_fn",
    "convnext_femto_ds_a", "convnext_femto_ds_b", "repvit_m0_6",
]
