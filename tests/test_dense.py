"""Dense prediction (repnext.dense): data generators and loaders, COCO/mIoU evaluation, the mmdet settings of
the Mask R-CNN, the protocol's dry run, and (GPU) a few Mask R-CNN steps of M5 at 1333x800."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from repnext.config import RunConfig
from repnext.data import DatasetError
from repnext.dense import synthetic
from repnext.dense.ade import AdeSegmentation, ade_root, confusion_matrix, segmentation_metrics
from repnext.dense.coco import CocoInstances, coco_root, detection_metrics, grouped_batches, to_coco_results
from repnext.dense.detection import AlignedRoIAlign, FlooredMatcher, build_mask_rcnn, mask_targets
from repnext.dense.protocol import get_protocol


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return synthetic.make_coco(tmp_path_factory.mktemp("dense") / "coco")


@pytest.fixture(scope="module")
def ade(tmp_path_factory) -> Path:
    return synthetic.make_ade(tmp_path_factory.mktemp("dense") / "ade")


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_generators_are_deterministic_and_load(coco, ade, tmp_path):
    assert _digest(synthetic.make_coco(tmp_path / "coco")) == _digest(coco)
    assert _digest(synthetic.make_ade(tmp_path / "ade")) == _digest(ade)
    val = CocoInstances(coco, "val", train=False)
    anns = list(val.coco.anns.values())
    # COCO's features: non-contiguous ids, crowds (uncompressed RLE), polygons, compressed RLE, empty images
    assert val.cat_ids == sorted((*synthetic.DIGIT_IDS, synthetic.TRIANGLE_ID)) and val.num_classes == 11
    assert any(a["iscrowd"] and isinstance(a["segmentation"]["counts"], list) for a in anns)
    assert any(isinstance(a["segmentation"], list) for a in anns)
    assert any(not a["iscrowd"] and isinstance(a["segmentation"].get("counts"), str)
               for a in anns if isinstance(a["segmentation"], dict))
    assert any(not val.coco.imgToAnns.get(i) for i in val.ids)
    for a in anns:  # every annotation's mask decodes to its area and lies in its box
        m = val.coco.annToMask(a)
        x, y, w, h = map(int, a["bbox"])
        assert m.sum() == a["area"] > 0 and m[y:y + h, x:x + w].sum() == m.sum()
    train = CocoInstances(coco, "train", train=True)
    image, target = train[(0, True)]
    assert image.shape[0] == 3 and target["masks"].shape[1:] == image.shape[1:]
    assert all(train._annotations(i) for i in train.ids)  # no empty training images, no crowd targets
    seg = AdeSegmentation(ade, "training", (256, 64), crop=64)
    x, y = seg[(0, 123)]
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    assert set(torch.unique(y).tolist()) <= set(range(12)) | {255}


def test_ground_truth_as_detections_scores_100(coco):
    val = CocoInstances(coco, "val", train=False)
    outputs, ids = [], []
    for i in range(len(val)):
        _, t = val[i]
        n = len(t["labels"])
        outputs.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(n),
                        "masks": t["masks"][:, None].float()})
        ids.append(t["image_id"])
    metrics = detection_metrics(val.coco, *to_coco_results(outputs, ids, val.cat_ids))
    assert metrics == pytest.approx(dict.fromkeys(metrics, 100.0))
    outputs[0]["labels"] = outputs[0]["labels"] % 11 + 1  # wrong classes on one image: below 100
    assert detection_metrics(val.coco, *to_coco_results(outputs, ids, val.cat_ids))["box_ap"] < 100


def test_known_confusion_matrix_gives_its_miou():
    label = torch.tensor([0, 0, 0, 0, 1, 1, 255, 255])
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 2, 0])
    cm = confusion_matrix(pred, label, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 0], [0, 0, 0]]  # ignored pixels count nowhere
    m = segmentation_metrics(cm)  # IoU 3/4 and 2/3; class 2 is nowhere, so left out
    assert m["miou"] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
    assert m["aacc"] == pytest.approx(100 * 5 / 6) and m["macc"] == pytest.approx(100 * (3 / 4 + 1) / 2)


def test_bad_roots_say_the_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"instances_\{train,val\}2017.json"):
        coco_root(tmp_path)
    with pytest.raises(DatasetError, match="ADEChallengeData2016/images"):
        ade_root(tmp_path)


def test_mask_rcnn_has_the_interface_and_mmdet_settings():
    model = build_mask_rcnn("repnext_m3", num_classes=80)
    names = {n for n, _ in model.named_children()}
    assert {"backbone", "rpn", "roi_heads", "transform"} <= names
    assert type(model.backbone.body).__name__ == "FeatureGetterNet"
    assert model.backbone.fpn.inner_blocks[0][0].in_channels == 64
    assert model.rpn.head.conv is not None and model.roi_heads.box_head.fc6.out_features == 1024
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 81
    assert model.rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    pool = model.roi_heads.box_roi_pool
    assert isinstance(pool, AlignedRoIAlign) and pool.sampling_ratio == 0
    assert model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert model.roi_heads.box_predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)


def test_low_quality_matches_need_iou_03():
    matcher = FlooredMatcher(0.7, 0.3, min_pos_iou=0.3)
    iou = torch.tensor([[0.2, 0.1, 0.0], [0.35, 0.35, 0.1]])  # gt x anchors
    matches = matcher(iou)
    assert matches.tolist() == [1, 1, -1]  # gt 0's best (0.2) is below the floor; gt 1 takes both its ties


def test_mask_targets_are_binary_and_aligned():
    gt = torch.zeros(1, 32, 32)
    gt[0, 8:24, 8:24] = 1
    target = mask_targets(gt, torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([0]), 28)
    assert set(target.unique().tolist()) == {1.0}  # the box is the mask: all ones, no soft border


def test_grouped_batches_keep_aspect_groups():
    groups = np.array([0, 1, 0, 1, 1, 0, 1])
    batches = grouped_batches(groups, 2, np.random.default_rng(0).permutation(7))
    assert all(len(b) == 2 and len(set(groups[b])) == 1 for b in batches)
    assert {i for b in batches for i in b} == set(range(7))


def test_full_dry_run_shows_the_official_protocol(capsys):
    from ablations.run import main

    for table, expected in (("detection", "batch=16 lr=0.0002 wd={wd} epochs=12 steps=[8, 11] warmup=500 "
                                          "img_scale=1333x800"),
                            ("segmentation", "batch=16 lr=0.0001 wd={wd} iters=80000 eval_every=8000 poly=0.9 "
                                             "crop=512 img_scale=2048x512")):
        assert main(["--table", table, "--profile", "full", "--dry-run", "--cluster", "debug"]) == 0
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if f"task={table}" in line]
        assert len(lines) == 3, out
        for line in lines:
            wd = "0.1" if "M5" in line and table == "detection" else "0.05"
            assert expected.format(wd=wd) in line, line


def test_protocol_follows_the_config():
    p = get_protocol("segmentation", RunConfig("repnext_m4", profile="full", batch_size=8, epochs=1000))
    assert (p.batch_size, p.iters, p.lr) == (8, 1000, 1e-4)
    with pytest.raises(ValueError, match="unknown dense task"):
        get_protocol("panoptic", RunConfig("repnext_m4"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_mask_rcnn_m5_steps_at_1333x800():
    torch.manual_seed(0)
    model = build_mask_rcnn("repnext_m5", num_classes=80).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.1)
    images = [torch.rand(3, 800, 1333, device="cuda") for _ in range(2)]
    masks = torch.zeros(3, 800, 1333, dtype=torch.uint8, device="cuda")
    boxes = torch.tensor([[100.0, 100.0, 400.0, 500.0], [600.0, 50.0, 900.0, 300.0], [1000.0, 400.0, 1300.0, 780.0]])
    for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        m[y1:y2, x1:x2] = 1
    targets = [{"boxes": boxes.cuda(), "labels": torch.tensor([1, 5, 80]).cuda(), "masks": masks}] * 2
    losses = []
    for _ in range(4):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert model.backbone.body(images[0][None]).__len__() == 4


@pytest.mark.slow  # 3 short runs: about 60 s on a free 2-core CPU
def test_segmentation_run_resumes_to_the_same_record(tmp_path, monkeypatch):
    from repnext.dense.engine import train_dense
    from repnext.train import Interrupted

    monkeypatch.setenv("REPNEXT_DATA", str(tmp_path / "data"))
    config = RunConfig("repnext_m3", profile="smoke", data="digits", batch_size=2, epochs=4)  # 4 iterations
    calls = []
    with pytest.raises(Interrupted, match="iteration 2"):
        train_dense("segmentation", config, tmp_path / "a", progress=False, should_stop=lambda: calls.append(1) or
                    len(calls) >= 2)
    resumed = train_dense("segmentation", config, tmp_path / "a", progress=False)
    straight = train_dense("segmentation", config, tmp_path / "b", progress=False)
    assert resumed["metrics"] == straight["metrics"] and resumed["history"] == straight["history"]
    assert set(resumed["metrics"]) == {"miou", "miou_best", "best_iter", "aacc", "macc"}
    assert resumed["untrained"]["miou"] >= 0 and (tmp_path / "a" / "log.txt").read_text().count("\n") == 1


def test_backbone_run_is_the_imagenet_tables_run():
    from ablations.spec import load_spec
    from repnext.dense.experiment import imagenet_run

    for table in ("detection", "segmentation"):
        for profile, distillation in (("smoke", False), ("full", True)):
            cell = load_spec(table).expand(profile)[0].parameters["backbone_run"]  # resolved for the profile
            assert cell["distillation"] is distillation
            ids = {r.run_id for r in load_spec("imagenet").expand(profile)
                   if r.config.model == "repnext_m3" and r.config.distillation == distillation}
            assert ids == {imagenet_run("repnext_m3", profile, cell).run_id}


def test_tables_show_paper_ours_delta(tmp_path):
    from ablations.render import table_frame, to_latex
    from ablations.spec import load_spec

    from .records import write_real_record

    det, seg = load_spec("detection"), load_spec("segmentation")
    metrics = {"box_ap": 40.81, "box_ap50": 62.4, "box_ap75": 44.7, "mask_ap": 37.8, "mask_ap50": 59.5,
               "mask_ap75": 40.6, "box_ap_final": 40.65, "best_epoch": 9}
    runs = det.expand("full")
    write_real_record(runs[0].folder(tmp_path), "detection", data="coco", metrics=metrics)
    latency = next(r for r in load_spec("latency").expand("full") if r.config.model == "repnext_m3")
    write_real_record(latency.folder(tmp_path), "latency", model="repnext_m3",
                      backbone={"latency_ms": 7.25, "img_size": 512, "device": "Test CPU (CPU)"})
    frame = table_frame(det, runs, tmp_path)
    row = frame.loc["RepNeXt-M3"]
    assert (row[("AP box", "paper")], row[("AP box", "ours")], row[("AP box", "Δ")]) == ("40.8", "40.8", "+0.0")
    # half-up as the paper rounds: 40.65 -> 40.7, 7.25 -> 7.3
    assert row[("AP box, final epoch", "ours")] == "40.7" and row[("Backbone 512x512 (ms)", "ours")] == "7.3"
    assert frame.loc["RepNeXt-M4"][("AP mask", "ours")] == "—" and "tab:detection" in to_latex(det, frame, [])
    runs = seg.expand("smoke")  # trained on the synthetic set: beside the paper's value, no delta
    write_real_record(runs[0].folder(tmp_path), "segmentation", metrics={"miou": 55.55, "miou_best": 56.0})
    frame = table_frame(seg, runs, tmp_path)
    assert (frame.loc["RepNeXt-M3", ("mIoU (%)", "paper")], frame.loc["RepNeXt-M3", ("mIoU (%)", "ours")]) == (
        "40.6", "55.6")
    assert ("mIoU (%)", "Δ") not in frame.columns
