"""repnext: reproduce RepNeXt (and its parent RepViT) with timm-native models.

``import repnext`` registers repnext_m0..m5, their single-branch forms repnext_m0e..m5e and the
baselines (repvit_m0_6, convnext_femto_ds_a/b) with timm.
"""
from . import models
from .models import RepNeXt
from .reparam import FUSE_MODES

__version__ = "0.1.0"
__all__ = ["FUSE_MODES", "RepNeXt", "models"]
