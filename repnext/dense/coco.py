"""COCO 2017 instances through pycocotools: the training/validation sets, aspect-ratio grouping, COCOeval.

Training targets follow mmdet's ``CocoDataset``: crowd regions are left out (mmdet ignores them; the
evaluation still uses them), boxes narrower or lower than 1 pixel and empty masks are dropped, and images
without a usable annotation are skipped (``filter_empty_gt``). Labels are 1..N in the order of the sorted
category ids (0 is torchvision's background); predictions go back to COCO's ids for COCOeval.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data import DatasetError

LAYOUT = "annotations/instances_{train,val}2017.json, train2017/, val2017/"


def coco_root(root: str | Path) -> Path:
    """``root`` (or ``root/coco``, so that one --data-root serves every table) if it holds COCO 2017 in the
    official layout; else a one-line error naming that layout."""
    path = Path(root).expanduser()
    for base in (path, path / "coco"):
        needed = [base / "annotations" / f"instances_{s}2017.json" for s in ("train", "val")]
        needed += [base / f"{s}2017" for s in ("train", "val")]
        if all(p.exists() for p in needed):
            return base
    raise DatasetError(f"COCO root {path} (or {path / 'coco'}) does not hold {LAYOUT}")


def load_coco(annotation_file: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        return COCO(str(annotation_file))


class CocoInstances(Dataset):
    """One split: items are (image as float CHW in 0..1, target dict of torchvision's detection API).
    ``dataset[(index, flip)]`` returns the image flipped horizontally when ``flip`` is true."""

    def __init__(self, root: str | Path, split: str, train: bool):
        root = coco_root(root)
        self.coco = load_coco(root / "annotations" / f"instances_{split}2017.json")
        self.folder = root / f"{split}2017"
        self.train = train
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        ids = sorted(self.coco.getImgIds())
        if train:  # mmdet's filter_empty_gt and min_size=32
            ids = [i for i in ids if self._annotations(i) and min(self._size(i)) >= 32]
        self.ids = ids

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def _size(self, image_id: int) -> tuple[int, int]:
        info = self.coco.imgs[image_id]
        return info["height"], info["width"]

    def _annotations(self, image_id: int) -> list[dict]:
        anns = self.coco.imgToAnns.get(image_id, [])
        return [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1
                and a.get("area", 1) > 0 and a["category_id"] in self.label_of]

    def aspect_groups(self) -> np.ndarray:
        """mmdet's ``GroupSampler`` flag: 1 where width > height."""
        return np.array([int(self._size(i)[1] > self._size(i)[0]) for i in self.ids])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[torch.Tensor, dict]:
        index, flip = item if isinstance(item, tuple) else (item, False)
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = np.array(Image.open(self.folder / info["file_name"]).convert("RGB"))
        anns = self._annotations(image_id)
        h, w = image.shape[:2]
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)],
                         np.float32).reshape(-1, 4)
        if flip:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        target = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes)),
                  "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
                  "masks": torch.from_numpy(np.ascontiguousarray(masks)), "image_id": image_id}
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255), target


def grouped_batches(groups: np.ndarray, batch: int, seed_order: np.ndarray) -> list[list[int]]:
    """mmdet's ``GroupSampler`` batches: within each aspect group, the epoch's order (``seed_order``, a
    permutation of all indices) padded to a multiple of ``batch`` by repeating the group's first indices;
    the batches of all groups then shuffled together (by the same permutation's order)."""
    chunks = []
    for g in np.unique(groups):
        members = [int(i) for i in seed_order if groups[i] == g]
        members += members[: (-len(members)) % batch]
        chunks += [members[k:k + batch] for k in range(0, len(members), batch)]
    rank = {int(i): r for r, i in enumerate(seed_order)}
    return sorted(chunks, key=lambda c: rank[c[-1]])


def to_coco_results(outputs: list[dict], image_ids: list[int], cat_ids: list[int]) -> tuple[list, list]:
    """torchvision predictions (labels 1..N, masks as probabilities) -> COCO bbox and segm result lists."""
    from pycocotools import mask as mask_utils

    boxes, segms = [], []
    for out, image_id in zip(outputs, image_ids):
        for box, label, score, mask in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist(),
                                           out["masks"]):
            x1, y1, x2, y2 = box
            common = {"image_id": image_id, "category_id": cat_ids[label - 1], "score": score}
            boxes.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            rle = mask_utils.encode(np.asfortranarray((mask[0] >= 0.5).numpy().astype(np.uint8)))
            segms.append({**common, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return boxes, segms


def coco_eval(coco, results: list[dict], iou_type: str) -> dict[str, float]:
    """COCOeval's AP, AP50, AP75 (percent) of ``results`` ('bbox' or 'segm') on ``coco``; 0 without results."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(float(s), 0.0) * 100 for s in evaluator.stats[:3]]  # -1: no ground truth of that kind
    return dict(zip(("ap", "ap50", "ap75"), stats))


def detection_metrics(coco, boxes: list[dict], segms: list[dict]) -> dict[str, float]:
    """The record's six APs (percent) from COCO result lists."""
    box, mask = coco_eval(coco, boxes, "bbox"), coco_eval(coco, segms, "segm")
    return {"box_ap": box["ap"], "box_ap50": box["ap50"], "box_ap75": box["ap75"],
            "mask_ap": mask["ap"], "mask_ap50": mask["ap50"], "mask_ap75": mask["ap75"]}
