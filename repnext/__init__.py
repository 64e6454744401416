"""repnext: reproduce RepNeXt (and its parent RepViT) with timm-native models.

``import repnext`` registers repnext_m0..m5, their single-branch forms repnext_m0e..m5e and the
baselines (repvit_m0_6, convnext_femto_ds_a/b) with timm: at once when timm is already imported, else as
soon as it is. Importing repnext alone stays cheap (no torch), so the command lines parse and reject bad
arguments before the 3-8 s of importing torch and timm.
"""
import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"
__all__ = ["FUSE_MODES", "RepNeXt", "models"]
_LAZY = {"models": ".models", "RepNeXt": ".models", "FUSE_MODES": ".reparam"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'repnext' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    return module if name == "models" else getattr(module, name)


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Imports repnext.models (which registers the models) right after timm itself has been imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            importlib.import_module(".models", __name__)

        spec.loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:
    from . import models
elif not any(isinstance(f, _RegisterWhenTimmLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())
