"""Safe checkpoint reading: weights only, never arbitrary unpickling.

Containers understood (all seen in the official releases and training runs):
``{'model': sd, ...}`` (main.py / the ``*_distill_300e.pth`` releases; ``args`` is an argparse Namespace),
``{'state_dict': sd, ...}`` (timm's CheckpointSaver, the ``*.pth.tar`` StarNet-recipe releases), a bare
state dict, and ``.safetensors``. EMA weights are ignored unless asked for: the paper evaluates the
non-EMA model.
"""
from __future__ import annotations

import argparse
import zipfile
from collections.abc import Collection, Iterable
from pathlib import Path

import torch
from torch import nn

from .errors import RepnextError

CONTAINER_KEYS = ("model", "state_dict")
EMA_KEYS = ("model_ema", "state_dict_ema")
_EXPECTED = (
    "expected a state dict, a {'model': ...} or {'state_dict': ...} checkpoint (.pth, .pth.tar) "
    "or a .safetensors file"
)


class CheckpointError(RepnextError):
    """A checkpoint file that cannot be read or does not fit the model."""


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split("/", 2)[1:2] == ["code"] for name in zf.namelist())


def read_checkpoint(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path``, loaded with ``weights_only=True`` (or safetensors)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file; {_EXPECTED}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {_EXPECTED}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return check_finite(load_file(str(path), device="cpu"), path)
        except Exception as e:  # safetensors raises its own SafetensorError / OSError
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path} is not a valid .safetensors file ({e})") from None
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (like the released *_fused.pt files), not a state dict; "
            "load it with torch.jit.load, or pass the training checkpoint (*_distill_300e.pth) instead"
        )
    return check_finite(extract_state_dict(load_weights_only(path), path, use_ema), path)


def _load_failure(error: Exception) -> str:
    """Why torch.load refused a file, without torch's advice to retry with weights_only=False (which would run
    whatever the file holds): its first line that is not that advice, else the exception's type."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line.removeprefix("WeightsUnpickler error:").strip() for line in lines
               if "weights_only" not in line.lower().replace(" ", "_") and not line.startswith("Check the doc")]
    return reasons[0] if reasons else type(error).__name__


def load_weights_only(path: Path) -> object:
    """``torch.load(path, weights_only=True)``; a file it refuses raises one line naming the file and why."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint; {_EXPECTED}")
    try:
        # official training checkpoints carry their argparse Namespace: a plain attribute bag, safe to allow
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on foreign bytes (UnpicklingError, IndexError, ...)
        raise CheckpointError(f"{path} is not a checkpoint that loads with weights_only=True "
                              f"({_load_failure(e)}); {_EXPECTED}") from None


def check_finite(state_dict: dict[str, torch.Tensor], origin: str | Path) -> dict[str, torch.Tensor]:
    """``state_dict`` itself; raises naming the tensors that hold NaN or inf (weights of a diverged run)."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{origin} has NaN or inf values in {len(bad)} tensor(s): {_summarise(bad, 5)}")
    return state_dict


def extract_state_dict(obj: object, origin: str | Path = "checkpoint", use_ema: bool = False) -> dict:
    """The tensor mapping inside a loaded checkpoint object."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{origin} holds a {type(obj).__name__}, not a state dict; {_EXPECTED}")
    keys = (EMA_KEYS if use_ema else ()) + CONTAINER_KEYS
    for key in keys:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    else:
        if use_ema:
            raise CheckpointError(f"{origin} has no EMA weights (looked for {', '.join(EMA_KEYS)})")
    state_dict = {k.removeprefix("module."): v for k, v in obj.items()}  # DDP-wrapped saves
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad or not state_dict:
        what = f"non-tensor entries {bad[:5]}" if bad else "no entries"
        raise CheckpointError(f"{origin} has {what} where a state dict was expected; {_EXPECTED}")
    return state_dict


def _summarise(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def adapt_state_dict(
        state_dict: dict,
        model: nn.Module,
        classifiers: Iterable[str] = (),
        first_conv: str | None = None,
) -> dict[str, torch.Tensor]:
    """Fit a checkpoint's state dict to ``model``; raise naming every key or shape that does not fit.

    * classifier weights whose class count differs from the model's are dropped (fresh heads stay);
    * the first conv is adapted to the model's input channels with timm's ``adapt_input_conv``;
    * ``num_batches_tracked`` buffers missing from a checkpoint (e.g. safetensors exports) are filled in.
    """
    state_dict = extract_state_dict(state_dict)
    target = model.state_dict()
    out = dict(state_dict)
    dropped = set()
    for name in classifiers:
        for key in (f"{name}.weight", f"{name}.bias"):
            # another class count, or a model built with num_classes=0
            if key in out and (key not in target or out[key].shape != target[key].shape):
                del out[key]
                dropped.add(key)
        head = name.rsplit(".", 1)[0] + "."
        if not any(k.startswith(head) for k in target):  # headless model: the head's norm goes too
            for key in [k for k in out if k.startswith(head)]:
                del out[key]
    if first_conv is not None:
        key = f"{first_conv}.weight"
        if key in out and key in target and out[key].shape[1] != target[key].shape[1]:
            from timm.models import adapt_input_conv

            out[key] = adapt_input_conv(target[key].shape[1], out[key])
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = value
    shapes = [
        f"{k} {tuple(out[k].shape)} vs {tuple(target[k].shape)}"
        for k in set(out) & set(target) if out[k].shape != target[k].shape
    ]
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    require_fit(name, {"missing keys": set(target) - set(out) - dropped, "unexpected keys": set(out) - set(target)},
                shapes)
    return out


def require_fit(target: str, keys: dict[str, Collection[str]], shapes: Collection[str]) -> None:
    """Raise a CheckpointError saying why a checkpoint does not fit ``target``: each non-empty group of ``keys``
    and the ``shapes`` that differ (``key shape vs shape``), counted and summarised; nothing when all are empty."""
    problems = [f"{label} ({len(found)}): {_summarise(found)}" for label, found in keys.items() if found]
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_summarise(shapes, 4)}")
    if problems:
        raise CheckpointError(f"checkpoint does not fit {target}: " + "; ".join(problems))
