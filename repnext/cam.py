"""Grad-CAM maps and the paper's Figure 3 grid (rows: images, columns: models), via ``pytorch_grad_cam``.

    models = [load_weights("repnext_m0", "results/<run>")]
    images = load_images("digits", 64)
    cams = compute_cams([m for m, _ in models], images.tensor, "gradcam")
    save_figure(cam_grid(images, cams, [label for _, label in models]), "out")   # out/gradcam.{png,pdf}

Maps are only worth looking at with trained weights (released checkpoints, or a run of the results store);
random weights give structured noise.
"""
from __future__ import annotations

import contextlib
import io
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm
import torch
from matplotlib.figure import Figure
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .checkpoint import CheckpointError, adapt_state_dict, read_checkpoint
from .config import RunConfig
from .models.repnext import RepNeXt
from .recipes import REPVIT
from .store import RunPaths, read_json

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "scorecam": ScoreCAM}
SAMPLES = ("chelsea", "astronaut", "coffee", "china", "flower")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
RANDOM_LABEL = "random weights (meaningless)"


# --- layers ----------------------------------------------------------------------------------------------

def _last_block(module: nn.Module) -> nn.Module:
    """A stage's last block (same output as the stage for sequential stages, but names the layer)."""
    blocks = getattr(module, "blocks", module)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        return blocks[-1]
    return module


def stage_modules(model: nn.Module) -> list[nn.Module]:
    """The model's stages, shallow to deep, as they are in this instance."""
    if isinstance(model, RepNeXt) or type(model).__name__ == "RepVit":
        return list(model.stages)
    # timm CNNs (ConvNeXt, FastViT, ResNet, EfficientNet, RegNet, ...) name their stages in feature_info
    info = getattr(model, "feature_info", None)
    names = [f["module"] for f in info] if isinstance(info, list) else []
    if not names and hasattr(info, "module_name"):  # a FeatureInfo object (features_only models)
        names = info.module_name()
    try:
        if names:
            return [model.get_submodule(name) for name in names]
    except AttributeError:
        pass
    stages = getattr(model, "stages", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages):
        return list(stages)
    raise ValueError(f"cannot choose a CAM target layer for {type(model).__name__}: it has no feature_info "
                     "and no .stages; pass the layers to pytorch_grad_cam yourself")


def target_layers(model: nn.Module, stage: int = -1) -> list[nn.Module]:
    """The layer a CAM reads: the last block of stage ``stage`` (default: the last stage, as Figure 3).

    Resolved on the instance given: fusing replaces modules, so a list taken from the training form would
    hook modules the fused model no longer runs.
    """
    stages = stage_modules(model)
    if not -len(stages) <= stage < len(stages):
        raise ValueError(f"{type(model).__name__} has {len(stages)} stages, no stage {stage}")
    return [_last_block(stages[stage])]


@torch.no_grad()
def stage_shapes(model: nn.Module, size: int | tuple[int, int]) -> list[tuple[int, ...]]:
    """Each stage's output shape for one ``size`` image (a dry forward with hooks; () for non-tensors)."""
    h, w = (size, size) if isinstance(size, int) else size
    stages = stage_modules(model)
    shapes: list[tuple[int, ...]] = [()] * len(stages)

    def hook(index: int):
        def record(_module, _input, out) -> None:
            shapes[index] = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(stages)]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, 3, h, w, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def auto_stage(model: nn.Module, size: int | tuple[int, int], min_cells: int = 4) -> int:
    """The deepest stage whose map is at least ``min_cells`` on each side at this input size.

    224 px gives the last stage (7x7, the paper's choice); at 32 px (the digits) the last stage is 1x1 and
    its CAM is a constant, so only a shallower stage can localise anything.
    """
    return _pick_stage(model, stage_shapes(model, size), min_cells)


def _pick_stage(model: nn.Module, shapes: list[tuple[int, ...]], min_cells: int = 4) -> int:
    maps = [i for i, s in enumerate(shapes) if len(s) == 4]
    if not maps:
        raise ValueError(f"{type(model).__name__}'s stages output {sorted(set(shapes))}, not NCHW maps: token "
                         "models need a reshape_transform")
    ok = [i for i in maps if min(shapes[i][-2:]) >= min_cells]
    return ok[-1] if ok else max(maps, key=lambda i: shapes[i][-1] * shapes[i][-2])


# --- weights ---------------------------------------------------------------------------------------------

def _classifier_keys(model_name: str) -> tuple[str, ...]:
    cfg = timm.models.get_pretrained_cfg(model_name)
    names = cfg.classifier if cfg is not None else "head"
    return (names,) if isinstance(names, str) else tuple(names)


def _num_classes(model_name: str, state_dict: dict) -> int | None:
    """Classes of the checkpoint's head, so a 10-class digits run does not get a fresh 1000-class head."""
    for name in _classifier_keys(model_name):
        weight = state_dict.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 2:
            return weight.shape[0]
    return None


def load_weights(model_name: str | None, weights: str | Path | None = None, num_classes: int | None = None
                 ) -> tuple[nn.Module, str]:
    """A model in eval mode and a column title for the figure.

    ``weights``: a checkpoint file (released or own; read weights-only), a run folder of the results store
    (config.json + checkpoint.pth; ``model_name`` may then be None), "pretrained" (timm's default weights,
    downloaded), or None / "random".
    """
    if weights == "pretrained":  # timm's default weights (downloaded; RepNeXt's come from its release)
        model = timm.create_model(model_name, pretrained=True)
        return model.eval(), f"{model_name}\n{model.pretrained_cfg.get('tag') or 'pretrained'}"
    if weights is None or weights == "random":
        if model_name is None:
            raise ValueError("random weights need a model name")
        warnings.warn(f"{model_name} has random weights: its CAMs are meaningless", stacklevel=2)
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(model_name, **kwargs).eval(), f"{model_name}\n{RANDOM_LABEL}"
    path = Path(weights).expanduser()
    run = RunPaths(path)
    if path.is_dir():
        config = read_json(run.config)
        if config is None or not run.checkpoint.is_file():
            raise ValueError(f"{path} is not a run folder of the results store (config.json + checkpoint.pth)")
        run_model = config["config"]["model"]
        if model_name not in (None, run_model):
            raise ValueError(f"run folder {path} holds a {run_model} run, not {model_name}")
        model_name = run_model
        state_dict = read_checkpoint(run.checkpoint)
        record = read_json(run.record) or {}
        model = timm.create_model(model_name, num_classes=record.get("num_classes")
                                  or _num_classes(model_name, state_dict) or 1000)
        model.load_state_dict(state_dict)  # our own runs: strict, no key mapping
        acc = (record.get("final") or {}).get("acc1")
        data = config["resolved"]["data"]
        desc = f"{data}, top-1 {acc:.1f}%" if acc is not None else f"{data}, unfinished run"
        return model.eval(), f"{model_name}\n{desc}"
    if not path.is_file():
        raise ValueError(f"weights {str(weights)!r}: no such checkpoint file or run folder; expected a file, "
                         "a results-store run folder, or None / 'random'")
    if model_name is None:
        raise ValueError(f"checkpoint file {path} needs a model name")
    state_dict = read_checkpoint(path)
    model = timm.create_model(model_name, num_classes=num_classes or _num_classes(model_name, state_dict) or 1000)
    # the family's own key mapping (official RepNeXt / FastViT / ConvNeXt layouts), then a strict check
    family_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if family_filter is not None:
        state_dict = family_filter(state_dict, model)
    first_conv = model.pretrained_cfg.get("first_conv")
    state_dict = adapt_state_dict(state_dict, model, _classifier_keys(model_name), first_conv)
    if _num_classes(model_name, state_dict) is None and model.num_classes:
        raise CheckpointError(f"{path} has no classifier weights for {model_name}: CAMs would explain a random head")
    model.load_state_dict(state_dict)
    return model.eval(), f"{model_name}\n{path.name}"


def load_models(models: Sequence[str], weights: Sequence | dict | None = None
                ) -> tuple[list[nn.Module], list[str]]:
    """``load_weights`` for each name; ``weights`` is a list matching ``models``, a {name: weights} dict
    (missing names: random) or None (all random)."""
    if weights is None or isinstance(weights, dict):
        weights = [(weights or {}).get(name) for name in models]
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} models; give one per model (None: random)")
    loaded = [load_weights(name, w) for name, w in zip(models, weights)]
    return [m for m, _ in loaded], [label for _, label in loaded]


# --- images ----------------------------------------------------------------------------------------------

class Images(NamedTuple):
    rgb: np.ndarray        # [N, H, W, 3] float32 in 0..1: what the model sees, for display
    tensor: torch.Tensor   # [N, 3, H, W] normalised model input
    names: list[str]


def _eval_geometry(size: int, crop_pct: float):
    """The engine's eval transform (timm's: resize to size / crop_pct, centre crop) without ToTensor and
    Normalize, so the displayed pixels are exactly the ones the model sees."""
    from timm.data import create_transform

    steps = create_transform(size, is_training=False, crop_pct=crop_pct, interpolation="bicubic").transforms
    return [t for t in steps if type(t).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")]


def _eval_view(img: Image.Image, geometry) -> np.ndarray:
    img = img.convert("RGB")
    for step in geometry:
        img = step(img)
    return np.asarray(img, dtype=np.float32) / 255.0


def _sample_images() -> list[tuple[str, Image.Image]]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    sk = load_sample_images()
    out = [(name, Image.fromarray(getattr(data, name)())) for name in SAMPLES[:3]]
    out += [(Path(f).stem, Image.fromarray(img)) for f, img in zip(sk.filenames, sk.images)]
    return out


def _digit_images(size: int, n: int | None) -> list[tuple[str, Image.Image]]:
    """Held-out digits (the smoke profile's validation split, upsampled as in training), class by class."""
    from .data import digits

    val = digits(size).val
    labels = np.asarray(val.labels)
    rank = np.zeros(len(labels), dtype=int)
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    order = np.lexsort((labels, rank))[: n or len(np.unique(labels))]  # 0..9, then the next of each class
    return [(f"digit {labels[i]}", val[int(i)][0]) for i in order]


def load_images(source: str | Path, size: int = 224, n: int | None = None,
                mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                crop_pct: float = REPVIT.eval_crop_pct) -> Images:
    """``"samples"`` (skimage + sklearn photos), ``"digits"`` (one held-out digit per class unless ``n``)
    or a folder of images, at the recipes' eval geometry and the models' normalisation."""
    if source == "samples":
        items = _sample_images()
    elif source == "digits":
        items = _digit_images(size, n)
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise ValueError(f"images {str(source)!r}: expected 'samples', 'digits' or a folder of images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        items = [(p.stem, Image.open(p)) for p in files]
    items = items[:n] if n else items
    geometry = _eval_geometry(size, crop_pct)
    rgb = np.stack([_eval_view(img, geometry) for _, img in items])
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    tensor = torch.from_numpy(((rgb - m) / s).transpose(0, 3, 1, 2).copy())
    return Images(rgb, tensor, [name for name, _ in items])


def image_config(model: nn.Module) -> dict:
    """``load_images`` keywords (mean, std, crop_pct) from a model's pretrained config."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {"mean": cfg["mean"], "std": cfg["std"], "crop_pct": cfg["crop_pct"]}


# --- maps ------------------------------------------------------------------------------------------------

def _targets(target: int | Sequence[int] | None, n: int) -> list[ClassifierOutputTarget] | None:
    if target is None:
        return None  # grad-cam explains each image's predicted class
    classes = [int(target)] * n if isinstance(target, (int, np.integer)) else [int(t) for t in target]
    if len(classes) != n:
        raise ValueError(f"target has {len(classes)} classes for {n} images")
    return [ClassifierOutputTarget(c) for c in classes]


def compute_cams(models: Sequence[nn.Module], images: torch.Tensor | Images, method: str = "gradcam",
                 target: int | Sequence[int] | None = None, batch_size: int = 16, stage: int | str = "auto"
                 ) -> np.ndarray:
    """CAMs [n_images, n_models, H, W] in 0..1 (each map scaled to its own maximum, as grad-cam does).

    ``target``: None explains each model's predicted class, an int one class for all images, a sequence
    one class per image. ``stage``: an index, or "auto" (``auto_stage``: the last stage at 224 px).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {', '.join(METHODS)}")
    x = images.tensor if isinstance(images, Images) else images
    n, _, h, w = x.shape
    out = np.zeros((n, len(models), h, w), dtype=np.float32)
    for j, model in enumerate(models):
        was_training = model.training
        shapes = stage_shapes(model, (h, w))
        index = _pick_stage(model, shapes) if stage == "auto" else stage
        layers = target_layers(model, index)  # raises on a stage the model does not have
        shape = shapes[index]
        if len(shape) != 4:
            raise ValueError(f"{type(model).__name__}'s stage {index} outputs {shape}, not NCHW maps: token "
                             "models need a reshape_transform")
        if shape[-2] * shape[-1] == 1:
            warnings.warn(f"{type(model).__name__}: stage {index} is 1x1 at {h}x{w} input, so its CAM is "
                          "empty; use a larger image size or an earlier stage", stacklevel=2)
        cam = METHODS[method](model=model, target_layers=layers)
        cam.batch_size = batch_size  # ScoreCAM's masked forwards per step
        uses_grads = cam.uses_gradients
        all_targets = _targets(target, n)
        try:
            for i in range(0, n, batch_size):
                batch = x[i:i + batch_size]
                targets = all_targets[i:i + batch_size] if all_targets else None
                # gradient methods need the input in the graph (frozen weights would leave no hook to fire);
                # ScoreCAM prints a tqdm bar per image: keep notebooks readable
                grad_ctx = contextlib.nullcontext() if uses_grads else torch.no_grad()
                with grad_ctx, contextlib.redirect_stderr(io.StringIO()):
                    maps = cam(input_tensor=batch.clone().requires_grad_(uses_grads), targets=targets)
                out[i:i + len(batch), j] = maps
        finally:
            cam.activations_and_grads.release()  # not `with cam`: its __exit__ swallows IndexError
            model.train(was_training)
        empty = int((out[:, j].max(axis=(1, 2)) == 0).sum())
        if empty and shape[-2] * shape[-1] > 1:
            # grad-cam clips negative evidence: a map that is negative everywhere comes back all zeros
            warnings.warn(f"{type(model).__name__}: {empty} of {n} {method} maps are empty (the evidence for the "
                          "class is negative everywhere at this layer; typical of random weights)", stacklevel=2)
    return out


@torch.no_grad()
def predictions(models: Sequence[nn.Module], images: torch.Tensor | Images, batch_size: int = 16) -> np.ndarray:
    """Predicted classes [n_images, n_models] (the classes a ``target=None`` CAM explains)."""
    x = images.tensor if isinstance(images, Images) else images
    cols = []
    for model in models:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        cols.append(torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu()
                               for i in range(0, len(x), batch_size)]))
        model.train(was_training)
    return torch.stack(cols, 1).numpy()


def cell_labels(models: Sequence[nn.Module], images: torch.Tensor | Images,
                target: int | Sequence[int] | None = None) -> list[list[str]]:
    """What each overlay explains: the predicted class (ImageNet names for 1000-class heads) or the target."""
    pred = predictions(models, images)
    info = None
    if all(getattr(m, "num_classes", 0) == 1000 for m in models):
        from timm.data import ImageNetInfo

        info = ImageNetInfo()

    def label(c: int) -> str:
        return info.index_to_description(int(c)).split(",")[0] if info else f"class {int(c)}"

    rows = []
    for i, row in enumerate(pred):
        if target is None:
            rows.append([f"pred: {label(c)}" for c in row])
        else:
            t = target if isinstance(target, (int, np.integer)) else target[i]
            rows.append([f"target: {label(t)} (pred {label(c)})" for c in row])
    return rows


def cam_mass_on(mask: np.ndarray, cam: np.ndarray) -> float:
    """Fraction of the CAM's total mass that falls inside a boolean mask (same shape)."""
    mask, cam = np.asarray(mask, bool), np.asarray(cam, np.float64)
    if mask.shape != cam.shape:
        raise ValueError(f"mask {mask.shape} and cam {cam.shape} differ in shape")
    total = cam.sum()
    if total <= 0:
        raise ValueError("the CAM is empty (all zeros): no mass to locate")
    return float(cam[mask].sum() / total)


# --- figure ----------------------------------------------------------------------------------------------

def cam_grid(images: Images | np.ndarray, cams: np.ndarray, model_labels: Sequence[str],
             image_labels: Sequence[str] | None = None, cell_labels: Sequence[Sequence[str]] | None = None,
             title: str | None = None, cell_inches: float = 2.0, image_weight: float = 0.5) -> Figure:
    """Rows: images; columns: the input, then one overlay per model (Figure 3's layout)."""
    rgb = images.rgb if isinstance(images, Images) else np.asarray(images, np.float32)
    if image_labels is None and isinstance(images, Images):
        image_labels = images.names
    n_img, n_models = cams.shape[:2]
    if len(rgb) != n_img or len(model_labels) != n_models:
        raise ValueError(f"cams {cams.shape[:2]} do not match {len(rgb)} images x {len(model_labels)} labels")
    fig = Figure(figsize=(cell_inches * (n_models + 1), cell_inches * n_img + (0.6 if title else 0.3)),
                 layout="constrained")
    axes = fig.subplots(n_img, n_models + 1, squeeze=False)
    for i in range(n_img):
        axes[i, 0].imshow(rgb[i])
        if image_labels is not None:
            axes[i, 0].set_ylabel(image_labels[i], fontsize=9)
        for j in range(n_models):
            axes[i, j + 1].imshow(show_cam_on_image(rgb[i], cams[i, j], use_rgb=True, image_weight=image_weight))
            if cell_labels is not None:
                axes[i, j + 1].set_xlabel(cell_labels[i][j], fontsize=8)
    axes[0, 0].set_title("input", fontsize=9)
    for j, label in enumerate(model_labels):
        width = int(cell_inches * 11)  # characters that fit over a cell at 9 pt
        axes[0, j + 1].set_title("\n".join(textwrap.fill(part, width) for part in label.split("\n")), fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig: Figure, output: str | Path, name: str = "gradcam", dpi: int = 150) -> list[Path]:
    """``output/name.png`` and ``output/name.pdf``."""
    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / f"{name}.png", output / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    return paths


# --- the gradcam table (ablations/specs/gradcam.toml): one run per model ---------------------------------

INK_THRESHOLD = 0.25  # a digit's pixels: mean RGB above this (white ink on black; about half of a 32-px digit)
CAMS_FILE = "cams.npz"  # per run: the figure rows' images and maps, which ablations/figures.py assembles


def _mass(mask: np.ndarray, maps: np.ndarray) -> dict | None:
    """Share of the maps' total mass on the mask and off it, and per pixel on / off (None: all maps empty)."""
    if maps.sum() <= 0:
        return None
    on, area = cam_mass_on(mask, maps), float(mask.mean())
    return {"mass_on_digit": on, "mass_on_background": 1.0 - on, "digit_area": area,
            "per_pixel_ratio": (on / area) / max((1.0 - on) / (1.0 - area), 1e-12)}


def _cell_weights(config, output: Path, checkpoints: dict, recipe: str, epochs: int) -> tuple[str | Path, dict]:
    """What the cell explains: a run trained here on the profile's data (the profile substitutes data), or the
    checkpoint file the spec's ``checkpoints`` names (the paper's ImageNet weights; nothing is downloaded)."""
    from .profiles import get_profile
    from .train import train

    name = config.model
    if not get_profile(config.profile).substitute_data:
        path = (checkpoints or {}).get(name)
        if not path:
            raise ValueError(f"gradcam ({config.profile} profile): no checkpoint for {name}: set "
                             f"[parameters] checkpoints.{name} in ablations/specs/gradcam.toml to its weights file")
        if not Path(path).expanduser().is_file():
            raise ValueError(f"gradcam ({config.profile} profile): checkpoints.{name} = {str(path)!r}: no such file")
        return Path(path).expanduser(), {"source": "checkpoint", "checkpoint": str(path)}
    run = output / "train"
    trained = RunConfig(model=name, recipe=recipe, profile=config.profile, epochs=epochs, seed=config.seed,
                        data_root=config.data_root, workers=config.workers, device=config.device)
    record = train(trained, run, progress=False)
    # the top-level keys the table's provenance line reads (ablations/render.py), as a training record has them
    return run, {"source": "trained", **{k: record[k] for k in ("recipe", "data", "data_description", "epochs")},
                 "training": {
        "folder": "train", "run_id": trained.run_id, "recipe": recipe, "epochs": record["epochs"],
        "data": record["data"], "img_size": record["img_size"], "final": record["final"], "best": record["best"]}}


def run_cell(config: dict | RunConfig, output: str | Path, *, checkpoints: dict | None = None,
             images: str = "digits", n_images: int | None = 100, figure_images: int = 10,
             methods: Sequence[str] = ("gradcam", "gradcam++"), recipe: str = "starnet", epochs: int = 3,
             img_size: int | None = None, stage: int | str = "auto", seed: int = 0) -> dict:
    """One model of the gradcam table (the paper's Figure 3) as a run of the results store; its record.

    A profile that substitutes data (smoke) trains the model here (``recipe``, ``epochs``) into
    ``output/train``; full reads ``checkpoints[model]``. Then CAMs of each method on ``n_images`` held-out
    images: on the digits, the share of their mass on the digit's pixels (mean RGB > ``INK_THRESHOLD``) against
    the background, over the images the model classifies right, beside a randomly initialised copy's. The
    first ``figure_images`` go to ``output/cams.npz`` and ``output/gradcam.{png,pdf}``. The contract of
    ``repnext.cells``: the spec's per-profile values are resolved when it expands.
    """
    from .profiles import get_profile
    from .runtime import Dist, environment
    from .store import write_record

    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    profile, output = config.profile, Path(output)
    paths = RunPaths(output)
    base = {"status": "complete", "run_id": config.run_id, "model": config.model, "profile": profile}
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown CAM method(s) {unknown}; expected some of {', '.join(METHODS)}")
    weights, origin = _cell_weights(config, output, checkpoints or {}, recipe, epochs)
    model, label = load_weights(config.model, weights)
    size = img_size or get_profile(profile).img_size
    imgs = load_images(images, size, n=n_images, **image_config(model))
    index = _pick_stage(model, stage_shapes(model, size)) if stage == "auto" else stage
    pred = predictions([model], imgs)[:, 0]
    digits = images == "digits"
    record = {**base, **origin, "label": label, "num_classes": model.num_classes,
              "images": {"source": str(images), "n": len(imgs.names), "img_size": size, "stage": index,
                         "map": list(stage_shapes(model, size)[index][-2:])},
              "methods": list(methods), "cam": {}}
    if digits:
        truth = np.array([int(name.split()[1]) for name in imgs.names])
        right = pred == truth
        record["accuracy"] = {"acc1": 100.0 * float(right.mean()), "n": len(right)}
        mask = imgs.rgb.mean(-1) > INK_THRESHOLD
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the baseline is random on purpose
            random_model = load_weights(config.model, None, num_classes=model.num_classes)[0]
    k = min(figure_images, len(imgs.names))
    figure_maps = {}
    for method in methods:
        entry = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty maps of the random baseline are expected
            maps = compute_cams([model], imgs, method, stage=index)[:, 0]
            if digits:
                entry = {"images": int(right.sum()), "trained": _mass(mask[right], maps[right]),
                         "random": _mass(mask[right], compute_cams([random_model], imgs.tensor[right], method,
                                                                  stage=index)[:, 0])}
        record["cam"][method] = entry
        figure_maps[method] = maps[:k]
    np.savez_compressed(output / CAMS_FILE, rgb=imgs.rgb[:k], names=np.array(imgs.names[:k]),
                        pred=pred[:k], methods=np.array(list(methods)),
                        cams=np.stack([figure_maps[m] for m in methods], 1))
    cells = [[f"pred: {int(c)}"] * len(methods) for c in pred[:k]]
    grid = "x".join(map(str, record["images"]["map"]))
    fig = cam_grid(imgs.rgb[:k], np.stack([figure_maps[m] for m in methods], 1), [f"{label}\n{m}" for m in methods],
                   image_labels=imgs.names[:k], cell_labels=cells,
                   title=f"{config.model}: stage {index} ({grid} map), {size} px")
    png = output / "gradcam.png"  # the run's own view; the table's figure (PNG and PDF) assembles the runs
    fig.savefig(png, dpi=100)
    record.update(img_size=size, figure={"png": png.name, "cams": CAMS_FILE},
                  environment=environment(torch.device("cpu"), Dist()))
    write_record(paths.record, record)
    return record
