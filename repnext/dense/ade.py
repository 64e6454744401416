"""ADE20K (``ADEChallengeData2016``) with mmseg 0.30's pipelines, and mIoU from a confusion matrix.

Train: reduce_zero_label (0 -> 255 ignored, 1..150 -> 0..149); resize keeping the ratio to ``img_scale`` times
a ratio in ``ratio_range``; random crop with ``cat_max_ratio`` 0.75 (up to 10 tries); flip 0.5; photometric
distortion; ImageNet normalisation on 0..255; pad to the crop (image 0, label 255).
Test: resize keeping the ratio to ``img_scale``, then each side resized up to a multiple of 32
(``align_resize.py``); the label stays at the original size (logits are resized back to it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from ..data import DatasetError

IGNORE = 255
LAYOUT = ("ADEChallengeData2016/images/{training,validation}/*.jpg and "
          "ADEChallengeData2016/annotations/{training,validation}/*.png")
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1) * 255
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1) * 255


def ade_root(root: str | Path) -> Path:
    """The ``ADEChallengeData2016`` folder at ``root``, under it, or under ``root/ade20k`` (one --data-root for
    every table); else a one-line error naming the layout."""
    path = Path(root).expanduser()
    for base in (path, path / "ADEChallengeData2016", path / "ade20k" / "ADEChallengeData2016"):
        needed = [base / kind / split for kind in ("images", "annotations") for split in ("training", "validation")]
        if base.name == "ADEChallengeData2016" and all(p.is_dir() for p in needed):
            return base
    raise DatasetError(f"ADE20K root {path} (or {path / 'ade20k'}) does not hold {LAYOUT}")


def rescale_size(h: int, w: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv's ``imrescale``: the largest size with the long edge <= max(scale), the short <= min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _resize(image: torch.Tensor, label: torch.Tensor | None, size: tuple[int, int]):
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, label


def _crop(rng: np.random.Generator, label: torch.Tensor, crop: int, cat_max_ratio: float) -> tuple[int, int]:
    h, w = label.shape
    for _ in range(10):
        y, x = int(rng.integers(0, max(h - crop, 0) + 1)), int(rng.integers(0, max(w - crop, 0) + 1))
        _, counts = torch.unique(label[y:y + crop, x:x + crop][label[y:y + crop, x:x + crop] != IGNORE],
                                 return_counts=True)
        if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
            break
    return y, x


def photometric(rng: np.random.Generator, image: torch.Tensor) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a float 0..255 image: brightness +-32, contrast 0.5-1.5 (before
    or after the colour changes), saturation 0.5-1.5, hue +-18 degrees; each with probability 0.5."""
    if rng.integers(2):
        image = (image + rng.uniform(-32, 32)).clamp(0, 255)
    contrast_first = rng.integers(2)
    if contrast_first and rng.integers(2):
        image = (image * rng.uniform(0.5, 1.5)).clamp(0, 255)
    if rng.integers(2):
        image = TF.adjust_saturation(image / 255, rng.uniform(0.5, 1.5)) * 255
    if rng.integers(2):
        image = TF.adjust_hue(image / 255, rng.integers(-18, 19) / 360) * 255
    if not contrast_first and rng.integers(2):
        image = (image * rng.uniform(0.5, 1.5)).clamp(0, 255)
    return image


class AdeSegmentation(Dataset):
    """One split. Train items: ``dataset[(index, seed)]`` -> (normalised crop, label crop), augmentation drawn
    from ``seed``; test items: ``dataset[index]`` -> (normalised aligned image, label at the original size)."""

    def __init__(self, root: str | Path, split: str, img_scale: tuple[int, int], crop: int | None = None,
                 ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75):
        base = ade_root(root)
        self.images = sorted((base / "images" / split).glob("*.jpg"))
        self.labels = [base / "annotations" / split / f"{p.stem}.png" for p in self.images]
        missing = [p.name for p in self.labels if not p.is_file()]
        if not self.images or missing:
            raise DatasetError(f"ADE20K {split} split in {base}: {len(self.images)} images, annotations missing "
                               f"for {missing[:3]}; expected {LAYOUT}")
        self.img_scale, self.crop, self.ratio_range, self.cat_max_ratio = img_scale, crop, ratio_range, cat_max_ratio

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.asarray(Image.open(self.images[index]).convert("RGB")).copy())
        label = torch.from_numpy(np.asarray(Image.open(self.labels[index])).astype(np.int64))
        label = torch.where(label == 0, IGNORE, label - 1)  # reduce_zero_label
        return image.permute(2, 0, 1).float(), label

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, label = self._load(index)
        if seed is None:
            size = rescale_size(*label.shape, self.img_scale)
            image, _ = _resize(image, None, tuple(-(-s // 32) * 32 for s in size))
            return (image - MEAN) / STD, label
        rng = np.random.default_rng(seed)
        ratio = rng.uniform(*self.ratio_range)
        scale = (self.img_scale[0] * ratio, self.img_scale[1] * ratio)
        image, label = _resize(image, label, rescale_size(*label.shape, scale))
        y, x = _crop(rng, label, self.crop, self.cat_max_ratio)
        image, label = image[:, y:y + self.crop, x:x + self.crop], label[y:y + self.crop, x:x + self.crop]
        if rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        image = (photometric(rng, image) - MEAN) / STD
        pad = (0, self.crop - image.shape[2], 0, self.crop - image.shape[1])
        return F.pad(image, pad, value=0.0), F.pad(label, pad, value=IGNORE)


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true, predicted) class pairs over the pixels whose label is not ignored."""
    keep = label != IGNORE
    pairs = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(pairs, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """mmseg's aAcc, mIoU and mAcc (percent); classes absent from labels and predictions are left out."""
    confusion = confusion.double()
    intersect = confusion.diag()
    area_label, area_pred = confusion.sum(1), confusion.sum(0)
    iou = intersect / (area_label + area_pred - intersect)  # nan where a class is nowhere
    acc = intersect / area_label
    return {"miou": float(iou.nanmean()) * 100, "macc": float(acc.nanmean()) * 100,
            "aacc": float(intersect.sum() / area_label.sum()) * 100}
