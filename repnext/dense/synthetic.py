"""Smoke data the project makes itself: scikit-learn's handwritten digits pasted onto canvases, written in the
layouts of COCO 2017 and ADE20K so that the real loaders read them (nothing can be downloaded).

* ``make_coco(root)``: ``annotations/instances_{train,val}2017.json``, ``{train,val}2017/*.jpg``; one instance
  per digit (mask = its ink not covered by later digits, box from that mask, compressed RLE), a filled
  triangle now and then (a polygon), a crowd of small same-class digits now and then (``iscrowd`` 1,
  uncompressed RLE), empty images, and COCO-like non-contiguous category ids.
* ``make_ade(root)``: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and ``annotations/...*.png``;
  label 0 ("other", ignored after reduce_zero_label), 1 sky, 2 ground, 3 + d the ink of digit d.

Everything is a function of the seed: the same files on every machine with the same libraries.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import digits_arrays

# COCO's ids skip numbers (1..90 for 80 classes); ours too: digit d -> DIGIT_IDS[d], the triangle -> TRIANGLE_ID
DIGIT_IDS = (1, 2, 4, 7, 8, 13, 15, 22, 27, 31)
TRIANGLE_ID = 44
COCO_SPLITS = {"train": 192, "val": 48}
ADE_SPLITS = {"training": 160, "validation": 40}
CANVASES = ((128, 96), (96, 128), (128, 128))  # (width, height): both orientations, for aspect grouping


def default_root() -> Path:
    """Where generated data lives: ``$REPNEXT_DATA`` or ``~/.cache/repnext``."""
    return Path(os.environ.get("REPNEXT_DATA", Path.home() / ".cache" / "repnext")).expanduser()


def _ensure(root: Path, make: Callable[[Path], None]) -> Path:
    """Build ``root`` once: into a temporary sibling, then renamed (a concurrent builder's copy wins)."""
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        make(tmp)
        tmp.chmod(0o755)
        os.rename(tmp, root)
    except OSError:
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _digit(rng: np.random.Generator, images: np.ndarray, size: int) -> tuple[int, np.ndarray]:
    """A random digit's class and its ink (0..1) upsampled to ``size`` pixels."""
    index = int(rng.integers(len(images)))
    ink = Image.fromarray((images[index] * (255 / 16)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return index, np.asarray(ink, dtype=np.float32) / 255


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = rng.uniform(40, 200, size=3)
    ramp = np.linspace(-30, 30, height)[:, None, None] * rng.choice([-1, 1])
    noise = rng.normal(0, 8, size=(height, width, 3))
    return np.clip(base + ramp + noise, 0, 255)


def _paste(canvas: np.ndarray, ink: np.ndarray, x: int, y: int, color: np.ndarray) -> np.ndarray:
    """Blend ``color`` by ``ink`` at (x, y); returns the pixels the digit now owns (ink > 0.5)."""
    h, w = ink.shape
    region = canvas[y:y + h, x:x + w]
    region[:] = region * (1 - ink[..., None]) + color * ink[..., None]
    owned = np.zeros(canvas.shape[:2], bool)
    owned[y:y + h, x:x + w] = ink > 0.5
    return owned


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    # COCO's crowd regions: run lengths as a list, column-major, starting with a run of zeros
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def _coco_image(rng: np.random.Generator, images: np.ndarray, targets: np.ndarray, index: int):
    """One canvas and its annotations (category id, mask, crowd flag, polygon or None)."""
    width, height = CANVASES[int(rng.integers(len(CANVASES)))]
    canvas = _background(rng, width, height)
    objects = []  # [category, mask, crowd, polygon]
    n = 0 if index % 16 == 5 else int(rng.integers(1, 5))  # an empty image now and then
    for _ in range(n):
        size = int(rng.integers(20, 48))
        k, ink = _digit(rng, images, size)
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        owned = _paste(canvas, ink, x, y, rng.uniform(0, 255, 3))
        for obj in objects:  # occlusion: later digits cover earlier ones
            obj[1] &= ~owned
        objects.append([DIGIT_IDS[targets[k]], owned, 0, None])
    if index % 8 == 3:  # a crowd: several small digits of one class in one region
        digit = int(rng.integers(10))
        pool = np.flatnonzero(targets == digit)
        crowd = np.zeros((height, width), bool)
        cx, cy = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 28))
        for j in range(4):
            _, ink = _digit(rng, images[pool], 12)
            crowd |= _paste(canvas, ink, cx + 9 * j, cy + int(rng.integers(0, 16)), rng.uniform(0, 255, 3))
        for obj in objects:
            obj[1] &= ~crowd
        objects.append([DIGIT_IDS[digit], crowd, 1, None])
    if index % 4 == 2:  # a filled triangle on top, annotated as a polygon (rasterised as pycocotools does)
        from pycocotools import mask as mask_utils

        x, y = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 30))
        polygon = [x + float(rng.uniform(0, 8)), y + 28.0, x + 14.0, y + float(rng.uniform(0, 8)), x + 28.0, y + 28.0]
        owned = mask_utils.decode(mask_utils.frPyObjects([polygon], height, width))[..., 0] > 0
        canvas[owned] = rng.uniform(0, 255, 3)
        for obj in objects:
            obj[1] &= ~owned
        objects.append([TRIANGLE_ID, owned, 0, polygon])
    return canvas.astype(np.uint8), [o for o in objects if o[1].sum() >= 4]


def _write_coco(root: Path, seed: int) -> None:
    images, targets = digits_arrays()
    categories = [{"id": c, "name": str(d), "supercategory": "digit"} for d, c in enumerate(DIGIT_IDS)]
    categories.append({"id": TRIANGLE_ID, "name": "triangle", "supercategory": "shape"})
    (root / "annotations").mkdir()
    ann_id = 1
    for split_index, (split, count) in enumerate(COCO_SPLITS.items()):
        rng = np.random.default_rng([seed, split_index])
        folder = root / f"{split}2017"
        folder.mkdir()
        entries, annotations = [], []
        for i in range(count):
            image_id = 1000 * (split_index + 1) + 3 * i  # sparse ids, as COCO's
            pixels, objects = _coco_image(rng, images, targets, i)
            name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(folder / name, quality=95)
            entries.append({"id": image_id, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]})
            for category, mask, crowd, polygon in objects:
                segmentation = [polygon] if polygon else _rle(mask, compressed=not crowd)
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": crowd,
                                    "segmentation": segmentation, "bbox": _box(mask), "area": float(mask.sum())})
                ann_id += 1
        data = {"info": {"description": "digits on canvases (repnext smoke data)"}, "images": entries,
                "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


def _ade_image(rng: np.random.Generator, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width, height = CANVASES[int(rng.integers(len(CANVASES)))]
    horizon = int(rng.integers(height // 3, 2 * height // 3))
    label = np.full((height, width), 2, np.uint8)  # ground
    label[:horizon] = 1  # sky
    sky, ground = rng.uniform(120, 255, 3) * [0.6, 0.8, 1.0], rng.uniform(30, 160, 3) * [0.8, 1.0, 0.6]
    canvas = np.where(label[..., None] == 1, sky, ground) + rng.normal(0, 10, (height, width, 3))
    band = int(rng.integers(0, 8))  # a strip of unlabelled pixels ("other", 0), as ADE's unannotated areas
    label[:, :band] = 0
    for _ in range(int(rng.integers(1, 5))):
        size = int(rng.integers(24, 56))
        k, ink = _digit(rng, images, size)
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        owned = _paste(canvas, ink, x, y, rng.uniform(0, 255, 3))
        label[owned] = 3 + targets[k]
    return np.clip(canvas, 0, 255).astype(np.uint8), label


def _write_ade(root: Path, seed: int) -> None:
    images, targets = digits_arrays()
    base = root / "ADEChallengeData2016"
    for split_index, (split, count) in enumerate(ADE_SPLITS.items()):
        rng = np.random.default_rng([seed, 10 + split_index])
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        prefix = "ADE_train" if split == "training" else "ADE_val"
        for i in range(count):
            pixels, label = _ade_image(rng, images, targets)
            Image.fromarray(pixels).save(base / "images" / split / f"{prefix}_{i + 1:08d}.jpg", quality=95)
            Image.fromarray(label).save(base / "annotations" / split / f"{prefix}_{i + 1:08d}.png")


def make_coco(root: str | Path | None = None, seed: int = 0) -> Path:
    """The synthetic COCO-format instance set (built on first use); returns its root."""
    return _ensure(Path(root) if root else default_root() / f"coco_digits_s{seed}", lambda p: _write_coco(p, seed))


def make_ade(root: str | Path | None = None, seed: int = 0) -> Path:
    """The synthetic ADE20K-format segmentation set (built on first use); returns the folder holding
    ``ADEChallengeData2016``."""
    return _ensure(Path(root) if root else default_root() / f"ade_digits_s{seed}", lambda p: _write_ade(p, seed))
