"""Datasets from user paths (ImageNet, CIFAR-100) and, for smoke runs, data that ships with installed
packages (scikit-learn's digits) or is synthesized. Every dataset yields PIL images, so the recipe's timm
transforms apply unchanged; a wrong path fails with one line that shows the expected layout.
"""
from __future__ import annotations

import hashlib
import importlib.util
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .config import DATASETS
from .errors import RepnextError

IMAGENET_LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (ImageFolder)"
CIFAR_LAYOUT = "ROOT/cifar-100-python/{train,test,meta} (the python-pickle release, unpacked)"


class DatasetError(RepnextError):
    """A dataset name or path that cannot be used."""


@dataclass(frozen=True)
class DataSplits:
    train: Dataset
    val: Dataset
    num_classes: int
    hflip_ok: bool = True   # digits: a mirrored 2 is not a 2
    description: str = ""


class ArrayImages(Dataset):
    """uint8 arrays (N, H, W[, 3]) and labels as PIL images, optionally upsampled, with a transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int | None = None, transform=None):
        self.images, self.labels, self.size, self.transform = images, labels, size, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index]).convert("RGB")
        if self.size and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BICUBIC)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction))
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train)), np.sort(np.array(val))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``load_digits`` returns them (images 0..16, targets), read from the CSV that
    scikit-learn ships: importing scikit-learn costs 2.5 s, a tenth of a smoke run's fixed cost."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is None or not csv.is_file():  # another layout: scikit-learn's own loader
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    data = np.loadtxt(csv, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digits(size: int = 32, seed: int = 0) -> DataSplits:
    """scikit-learn's 1,797 real handwritten 8x8 digits, upsampled; a fixed stratified 80/20 split."""
    raw, target = digits_arrays()
    images = (raw * (255.0 / 16.0)).round().astype(np.uint8)
    train, val = _stratified_split(target, 0.2, seed)
    return DataSplits(
        ArrayImages(images[train], target[train], size), ArrayImages(images[val], target[val], size),
        num_classes=10, hflip_ok=False, description=f"sklearn digits, {len(train)} train / {len(val)} val",
    )


def synthetic(size: int = 32, num_classes: int = 4, n_train: int = 64, n_val: int = 32, seed: int = 0
              ) -> DataSplits:
    """Pure plumbing: each class is a fixed random colour pattern, each image that pattern plus noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(num_classes, 8, 8, 3))

    def make(n: int):
        labels = rng.integers(0, num_classes, size=n)
        noise = rng.normal(0, 40, size=(n, 8, 8, 3))
        return np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8), labels

    (xt, yt), (xv, yv) = make(n_train), make(n_val)
    return DataSplits(ArrayImages(xt, yt, size), ArrayImages(xv, yv, size), num_classes,
                      description=f"synthetic, {num_classes} classes, {n_train} train / {n_val} val")


def imagenet(root: str | Path) -> DataSplits:
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetError(f"ImageNet root {root} has no {split}/ folder; expected {IMAGENET_LAYOUT}")
    train, val = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
    if train.classes != val.classes:
        raise DatasetError(f"{root}/train and {root}/val have different class folders; expected {IMAGENET_LAYOUT}")
    return DataSplits(train, val, len(train.classes), description=f"ImageFolder {root}")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR python release holds: builtins and numpy arrays."""
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _load_cifar_file(path: Path) -> dict:
    with path.open("rb") as f:
        obj = _ArrayUnpickler(f, encoding="latin1").load()
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def cifar100(root: str | Path) -> DataSplits:
    """CIFAR-100 from its python-pickle release (no download); 32 px images, upsampled by the transforms."""
    root = Path(root).expanduser()
    folder = root if (root / "train").is_file() else root / "cifar-100-python"
    if not all((folder / name).is_file() for name in ("train", "test")):
        raise DatasetError(f"CIFAR-100 not found under {root}; expected {CIFAR_LAYOUT}")
    splits = []
    for name in ("train", "test"):
        try:
            d = _load_cifar_file(folder / name)
            images = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            splits.append(ArrayImages(images, np.asarray(d["fine_labels"])))
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise DatasetError(f"{folder / name} is not a CIFAR-100 python file ({e}); expected {CIFAR_LAYOUT}"
                               ) from None
    return DataSplits(splits[0], splits[1], 100, description=f"CIFAR-100 {folder}")


def build_dataset(name: str, root: str | Path | None = None, img_size: int = 32) -> DataSplits:
    """The named dataset's train/val splits (untransformed PIL images)."""
    if name == "digits":
        return digits(img_size)
    if name == "synthetic":
        return synthetic(img_size)
    if name in ("imagenet", "cifar100"):
        if root is None:
            layout = IMAGENET_LAYOUT if name == "imagenet" else CIFAR_LAYOUT
            raise DatasetError(f"dataset {name} needs --data-root; expected {layout}")
        return imagenet(root) if name == "imagenet" else cifar100(root)
    raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, position): stable across processes and resumes."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_host_rngs(seed: int) -> None:
    """Python's, numpy's and torch's CPU generators (torch.manual_seed also seeds every accelerator's, at
    1.3 ms a call: too slow once per sample)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


def seed_everything(seed: int) -> None:
    seed_host_rngs(seed)
    torch.manual_seed(seed)


class Transformed(Dataset):
    """Applies a random transform with RNGs seeded by (run seed, epoch, sample position): augmentation is a
    function of where a sample sits in the epoch, not of worker or process state, so a resumed run (or
    one with another worker count) sees exactly the same images. The epoch comes with each index from the
    sampler (``(epoch, position, index)``), not from this object: persistent workers hold their own copy."""

    def __init__(self, dataset: Dataset, transform: Callable, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int, int] | int):
        epoch, position, index = item if isinstance(item, tuple) else (0, item, item)
        img, label = self.dataset[index]
        seed_host_rngs(sample_seed(self.seed, epoch, position))  # transforms run on the CPU
        return self.transform(img), label
