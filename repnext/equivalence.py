"""How exact the inference forms are: logits of the training form against every fused form on real images.

Weights are random (no released checkpoint ships with the project) but not trivial: every BatchNorm's
running statistics are calibrated on the images first, so the folds see real means and variances. The
errors are then what a user's checkpoint would show: float32 rounding, or a bug.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn

from .complexity import complexity, count_macs, count_params, inference_form
from .config import RunConfig
from .runtime import Dist, environment
from .store import RunPaths, write_record

FORMS = ("official", "full", "single_branch", "single_branch_plain")


def sample_images() -> list[Image.Image]:
    """The photos that ship with scikit-image and scikit-learn (cat, astronaut, coffee, china, flower)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    arrays = [data.chelsea(), data.astronaut(), data.coffee(), *load_sample_images().images]
    return [Image.fromarray(a).convert("RGB") for a in arrays]


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Running statistics = the batch statistics of ``x`` (cumulative average over one pass)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    model(x)
    return model.eval()


@torch.no_grad()
def measure_equivalence(name: str, img_size: int = 224, seed: int = 0, forms: tuple[str, ...] = FORMS) -> dict:
    """Max abs logit error of each fused form against the training form, and every form's params/MACs."""
    torch.manual_seed(seed)
    model = timm.create_model(name)
    transform = create_transform(**{**resolve_data_config(model=model), "input_size": (3, img_size, img_size)})
    x = torch.stack([transform(im) for im in sample_images()])
    calibrate_bn(model, x)
    reference = model(x)
    size = (1, 3, img_size, img_size)
    result = {"model": name, "img_size": img_size, "images": x.shape[0], "seed": seed,
              "logit_scale": reference.abs().max().item(),
              "forms": {"train": {"params": count_params(model), "macs": count_macs(model, size),
                                  "max_abs_error": 0.0}}}
    for form in forms:
        fused = inference_form(model, form)
        result["forms"][form] = {"params": count_params(fused), "macs": count_macs(fused, size),
                                 "max_abs_error": (fused(x) - reference).abs().max().item()}
    return result


def run_cell(config: dict | RunConfig, output: str | Path, *, img_size: int = 224) -> dict:
    """One row of the equivalence table as a run of the results store (the contract of ``repnext.cells``):
    measure, write record.json."""
    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    record = {"status": "complete", "run_id": config.run_id, "model": config.model, "profile": config.profile,
              "source": "measured", **measure_equivalence(config.model, img_size)}
    if timm.is_model(f"{config.model}e"):  # the E model trained as such, counted as the paper counts it
        record["e_model"] = complexity(f"{config.model}e", 1000, img_size, "official").as_dict()
    record["environment"] = environment(torch.device("cpu"), Dist())
    write_record(RunPaths(Path(output)).record, record)
    return record
