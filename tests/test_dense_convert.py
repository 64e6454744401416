"""The converter from the released mmdet Mask R-CNN checkpoints (dense.md's key names) to build_mask_rcnn."""
import copy
import math
import subprocess
import sys

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers

from repnext.checkpoint import CheckpointError, read_checkpoint
from repnext.dense.convert import convert_state_dict, main
from repnext.dense.detection import build_mask_rcnn
from repnext.dense.synthetic import make_coco

M3_CHANNELS = (64, 128, 256, 512)


def official_heads(channels=M3_CHANNELS, classes=80) -> dict[str, tuple]:
    """mmdet 2.28's ``mask_rcnn_r50_fpn`` neck and heads, names and shapes (written from mmdet, not from
    the converter): FPN ConvModules, RPNHead (sigmoid: A = 3 outputs), Shared2FCBBoxHead, FCNMaskHead."""
    shapes = {}
    for i, c in enumerate(channels):
        shapes |= {f"neck.lateral_convs.{i}.conv.weight": (256, c, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (256,),
                   f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (256,)}
    shapes |= {"rpn_head.rpn_conv.weight": (256, 256, 3, 3), "rpn_head.rpn_conv.bias": (256,),
               "rpn_head.rpn_cls.weight": (3, 256, 1, 1), "rpn_head.rpn_cls.bias": (3,),
               "rpn_head.rpn_reg.weight": (12, 256, 1, 1), "rpn_head.rpn_reg.bias": (12,),
               "roi_head.bbox_head.shared_fcs.0.weight": (1024, 256 * 7 * 7),
               "roi_head.bbox_head.shared_fcs.0.bias": (1024,),
               "roi_head.bbox_head.shared_fcs.1.weight": (1024, 1024), "roi_head.bbox_head.shared_fcs.1.bias": (1024,),
               "roi_head.bbox_head.fc_cls.weight": (classes + 1, 1024),
               "roi_head.bbox_head.fc_cls.bias": (classes + 1,),
               "roi_head.bbox_head.fc_reg.weight": (classes * 4, 1024),
               "roi_head.bbox_head.fc_reg.bias": (classes * 4,),
               "roi_head.mask_head.upsample.weight": (256, 256, 2, 2), "roi_head.mask_head.upsample.bias": (256,),
               "roi_head.mask_head.conv_logits.weight": (classes, 256, 1, 1),
               "roi_head.mask_head.conv_logits.bias": (classes,)}
    for i in range(4):
        shapes |= {f"roi_head.mask_head.convs.{i}.conv.weight": (256, 256, 3, 3),
                   f"roi_head.mask_head.convs.{i}.conv.bias": (256,)}
    return shapes


@pytest.fixture(scope="module")
def model():
    return build_mask_rcnn("repnext_m3")


@pytest.fixture(scope="module")
def official(manifest) -> dict[str, torch.Tensor]:
    """A fake release: the official classification model's keys (the manifest) under ``backbone.`` without the
    head, plus mmdet's neck and heads; every tensor distinct (arange) so a mix-up shows."""
    shapes = {f"backbone.{k}": tuple(s) for k, s, *_ in manifest["repnext_m3"]["keys"] if not k.startswith("head")}
    shapes |= official_heads()
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, s in shapes.items():
        out[k] = torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g)
    return out


def test_every_key_maps_and_nothing_is_left(model, official):
    target = model.state_dict()
    converted = convert_state_dict(official, target)
    assert set(converted) == set(target)
    assert len(official) == len(target)  # one to one: nothing filled in, nothing dropped
    assert all(converted[k].shape == target[k].shape for k in target)
    model.load_state_dict(converted, strict=True)
    body = model.backbone.body.model
    torch.testing.assert_close(body.stages[2].blocks[12].channel_mixer[0].conv.weight,
                               official["backbone.stages.2.blocks.12.channel_mixer.0.conv.weight"])
    torch.testing.assert_close(model.backbone.fpn.inner_blocks[3][0].weight,
                               official["neck.lateral_convs.3.conv.weight"])
    torch.testing.assert_close(model.rpn.head.cls_logits.weight, official["rpn_head.rpn_cls.weight"])


def test_classes_land_on_their_rows(official, model):
    converted = convert_state_dict(official, model.state_dict())
    cls_w, cls_b = official["roi_head.bbox_head.fc_cls.weight"], official["roi_head.bbox_head.fc_cls.bias"]
    reg_w = official["roi_head.bbox_head.fc_reg.weight"]
    logits_w = official["roi_head.mask_head.conv_logits.weight"]
    new_cls = converted["roi_heads.box_predictor.cls_score.weight"]
    new_reg = converted["roi_heads.box_predictor.bbox_pred.weight"]
    new_logits = converted["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    for c in (0, 41, 79):  # mmdet class c is torchvision label c + 1
        torch.testing.assert_close(new_cls[c + 1], cls_w[c])
        torch.testing.assert_close(new_reg[4 * (c + 1): 4 * (c + 2)], reg_w[4 * c: 4 * (c + 1)])
        torch.testing.assert_close(new_logits[c + 1], logits_w[c])
    torch.testing.assert_close(new_cls[0], cls_w[80])  # background: mmdet's last row, torchvision's first
    torch.testing.assert_close(converted["roi_heads.box_predictor.cls_score.bias"][0], cls_b[80])
    assert not new_reg[:4].any() and not new_logits[0].any()
    # the class probabilities are the same numbers: softmax over 81 logits, background moved
    x = torch.randn(5, 1024)
    mm = torch.softmax(x @ cls_w.T + cls_b, dim=1)
    tv = torch.softmax(x @ new_cls.T + converted["roi_heads.box_predictor.cls_score.bias"], dim=1)
    torch.testing.assert_close(tv[:, 1:], mm[:, :80])
    torch.testing.assert_close(tv[:, 0], mm[:, 80])


def mmdet_base_anchors(base_size: int, ratios, scales) -> torch.Tensor:
    """mmdet 2.28 ``AnchorGenerator.gen_single_level_base_anchors`` (scale_major=True, center_offset=0)."""
    ratios, scales = torch.tensor(ratios), torch.tensor(scales, dtype=torch.float)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (base_size * w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (base_size * h_ratios[:, None] * scales[None, :]).view(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def test_rpn_anchor_order_matches_mmdet(model):
    """rpn_cls channel a is anchor a in both: the per-location base anchors come in the same order."""
    generator = model.rpn.anchor_generator
    cells = generator.cell_anchors or [generator.generate_anchors(s, r) for s, r in
                                       zip(generator.sizes, generator.aspect_ratios)]
    for level, stride in enumerate((4, 8, 16, 32, 64)):
        torch.testing.assert_close(cells[level].float(), mmdet_base_anchors(stride, [0.5, 1.0, 2.0], [8]))
    assert math.isclose(float(cells[0][0, 3] - cells[0][0, 1]) / float(cells[0][0, 2] - cells[0][0, 0]), 0.5)


def test_rpn_channel_a_scores_base_anchor_a(model):
    """torchvision pairs rpn cls channel a with base anchor a at every location and level, as mmdet does
    (``permute(0, 2, 3, 1).reshape(-1, A)`` against location-major, anchor-minor anchors)."""
    head = copy.deepcopy(model.rpn.head)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.cls_logits.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))  # mmdet ratios 0.5, 1, 2
    features = [torch.zeros(1, 256, s, s) for s in (16, 8, 4, 2, 1)]  # a 64x64 image at strides 4..64
    objectness, deltas = head(features)
    anchors = model.rpn.anchor_generator(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), features)[0]
    scores, _ = concat_box_prediction_layers(objectness, deltas)
    wh = anchors[:, 2:] - anchors[:, :2]
    ratio_index = torch.round(torch.log2(wh[:, 1] / wh[:, 0])) + 1  # h / w = 0.5, 1, 2 -> 0, 1, 2
    torch.testing.assert_close(scores.flatten(), ratio_index)


def test_misfit_names_what_is_wrong(official, model):
    target = model.state_dict()
    extra = dict(official, **{"roi_head.bbox_head.fc_extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"no counterpart.*fc_extra"):
        convert_state_dict(extra, target)
    partial = {k: v for k, v in official.items() if not k.startswith("rpn_head.rpn_reg")}
    with pytest.raises(CheckpointError, match=r"does not fill.*rpn.head.bbox_pred"):
        convert_state_dict(partial, target)
    wrong = dict(official, **{"roi_head.bbox_head.fc_cls.weight": torch.zeros(91, 1024)})
    with pytest.raises(CheckpointError, match=r"shape mismatches.*fc_cls"):
        convert_state_dict(wrong, target)


def test_command_writes_a_loadable_file(official, model, tmp_path):
    src = tmp_path / "repnext_m3_coco.pth"
    torch.save({"meta": {"epoch": 12, "CLASSES": ("person", "bicycle")}, "state_dict": official,
                "optimizer": {"state": {}, "param_groups": [{"lr": 2e-6}]}}, src)
    dst = tmp_path / "out" / "m3.safetensors"
    assert main([str(src), str(dst)]) == 0
    converted = read_checkpoint(dst)
    model.load_state_dict(converted, strict=True)
    torch.testing.assert_close(converted["roi_heads.box_predictor.cls_score.weight"][1],
                               official["roi_head.bbox_head.fc_cls.weight"][0])
    pth = tmp_path / "m3.pth"
    assert main([str(src), str(pth)]) == 0
    assert set(torch.load(pth, weights_only=True)["model"]) == set(converted)


def test_command_bad_input_is_one_line(tmp_path):
    missing = tmp_path / "repnext_m3_coco.pth"
    r = subprocess.run([sys.executable, "-m", "repnext.dense.convert", str(missing), str(tmp_path / "o.pth")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and str(missing) in r.stderr
    nameless = tmp_path / "detector.pth"
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}}, nameless)
    assert main([str(nameless), str(tmp_path / "o.pth")]) == 1
    assert not (tmp_path / "o.pth").exists()


def test_evaluate_wants_coco_val(official, tmp_path, capsys):
    src = tmp_path / "repnext_m3_coco.pth"
    torch.save({"state_dict": official}, src)
    # the synthetic set is COCO-format with other categories: a one-line error, not wrong numbers
    assert main([str(src), str(tmp_path / "m3.safetensors"), "--evaluate", str(make_coco())]) == 1
    err = capsys.readouterr().err.strip()
    assert "categories, the detector 80; expected COCO 2017 (80)" in err and "\n" not in err
    assert main([str(src), str(tmp_path / "m3.safetensors"), "--evaluate", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "annotations/instances_{train,val}2017.json" in err and "\n" not in err
