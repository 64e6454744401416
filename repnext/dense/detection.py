"""Mask R-CNN 1x on a RepNeXt FPN backbone: torchvision's model, set to the official mmdet 2.28 config.

What torchvision does differently by default and is changed here (reference: dense.md): RoIAlign with
``aligned=True`` and ``sampling_ratio=0`` and mmdet's RoI-to-level rule; 1000 RPN proposals kept in training;
L1 box losses (RPN and RoI head) instead of smooth-L1; RPN low-quality matches only above IoU 0.3, the last
ground truth winning ties as in mmdet's ``MaxIoUAssigner``; binary mask targets cropped with aligned RoIAlign;
anchors not rounded; Xavier FPN / fc and normal(0.01) / normal(0.001) classifier / regressor init.

Classes: torchvision's layout, background at index 0 and the ``num_classes`` foreground classes at 1..N in
``roi_heads.box_predictor`` and ``roi_heads.mask_predictor`` (N + 1 outputs each; mmdet: background last in
``fc_cls`` and no background channel in ``conv_logits``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, roi_align

from .backbone import RepNeXtFPN, xavier_init

ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))  # mmdet: scale 8 x strides 4..64
ANCHOR_RATIOS = ((0.5, 1.0, 2.0),) * 5
MASK_SIZE = 28


class MMDetAnchorGenerator(AnchorGenerator):
    """torchvision's anchors without rounding the base anchors (mmdet 2.x keeps them fractional)."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device="cpu") -> Tensor:
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales[None, :] / h_ratios[:, None]).view(-1)
        hs = (scales[None, :] * h_ratios[:, None]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


class FlooredMatcher(Matcher):
    """mmdet's ``MaxIoUAssigner`` low-quality step: each ground truth whose best IoU reaches ``min_pos_iou``
    takes every prediction at that IoU (a later ground truth wins a prediction claimed twice)."""

    def __init__(self, high: float, low: float, min_pos_iou: float):
        super().__init__(high, low, allow_low_quality_matches=True)
        self.min_pos_iou = min_pos_iou

    def set_low_quality_matches_(self, matches: Tensor, all_matches: Tensor, match_quality_matrix: Tensor) -> None:
        highest = match_quality_matrix.max(dim=1, keepdim=True).values
        gt, pred = torch.where((match_quality_matrix == highest) & (highest >= self.min_pos_iou))
        claim = torch.full_like(matches, -1).scatter_reduce_(0, pred, gt, "amax")
        matches.copy_(torch.where(claim >= 0, claim, matches))


class MMDetRPN(RegionProposalNetwork):
    """The RPN with an L1 box loss averaged over the sampled anchors (mmdet ``L1Loss``, avg_factor = samples)."""

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        labels, targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.l1_loss(pred_bbox_deltas[pos], targets[pos], reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss


class AlignedRoIAlign(MultiScaleRoIAlign):
    """Multi-level RoIAlign as mmcv's ``SingleRoIExtractor``: aligned=True, level = floor(log2(sqrt(area) / 56))
    clamped to the levels, fixed strides (no inference of scales from the first batch)."""

    def __init__(self, featmap_names: list[str], output_size: int, strides: tuple[int, ...]):
        super().__init__(featmap_names, output_size, sampling_ratio=0)
        self.strides = strides

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [x[k] for k in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        wh = (rois[:, 3:5] - rois[:, 1:3]).clamp(min=0)
        scale = torch.sqrt(wh[:, 0] * wh[:, 1])
        levels = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, len(features) - 1).long()
        out = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            idx = torch.where(levels == level)[0]
            out[idx] = roi_align(feature, rois[idx], self.output_size, 1.0 / stride, 0, aligned=True).to(out.dtype)
        return out


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched: Tensor, size: int = MASK_SIZE) -> Tensor:
    """mmdet's ``mask_target``: each matched ground-truth mask cropped by its proposal with aligned RoIAlign
    (sampling ratio 0) and binarised at 0.5."""
    rois = torch.cat([matched.to(boxes)[:, None], boxes], dim=1)
    crops = roi_align(gt_masks[:, None].to(boxes), rois, (size, size), 1.0, 0, aligned=True)[:, 0]
    return (crops >= 0.5).to(boxes)


class MMDetRoIHeads(RoIHeads):
    """Box and mask branches with mmdet's losses: CE + L1 (sum over positives / sampled RoIs), binary mask
    targets. Keypoints are not supported."""

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(x)
        if self.training:
            losses = self.box_loss(class_logits, box_regression, labels, regression_targets)
            positive = [torch.where(lab > 0)[0] for lab in labels]
            boxes = [p[i] for p, i in zip(proposals, positive)]
            matched = [m[i] for m, i in zip(matched, positive)]
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
            losses["loss_mask"] = self.mask_loss(logits, boxes, matched, targets)
            return [], losses
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
        masks = maskrcnn_inference(logits, labels)
        return [dict(boxes=b, labels=lab, scores=s, masks=m) for b, lab, s, m in zip(boxes, labels, scores, masks)], {}

    @staticmethod
    def box_loss(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                 regression_targets: list[Tensor]) -> dict[str, Tensor]:
        labels, targets = torch.cat(labels), torch.cat(regression_targets)
        positive = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(len(labels), -1, 4)[positive, labels[positive]]
        box_loss = F.l1_loss(deltas, targets[positive], reduction="sum") / labels.numel()
        return {"loss_classifier": F.cross_entropy(class_logits, labels), "loss_box_reg": box_loss}

    @staticmethod
    def mask_loss(logits: Tensor, boxes: list[Tensor], matched: list[Tensor],
                  targets: list[dict[str, Tensor]]) -> Tensor:
        labels = torch.cat([t["labels"][m] for t, m in zip(targets, matched)])
        goal = torch.cat([mask_targets(t["masks"], b, m, logits.shape[-1]) for t, b, m in zip(targets, boxes, matched)])
        if goal.numel() == 0:
            return logits.sum() * 0
        return F.binary_cross_entropy_with_logits(logits[torch.arange(len(labels)), labels], goal)


def _init_box_head(model: MaskRCNN) -> None:
    xavier_init(model.roi_heads.box_head)
    predictor = model.roi_heads.box_predictor
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)


def _mmdet_rpn(rpn: RegionProposalNetwork, post_nms_train: int, post_nms_test: int) -> MMDetRPN:
    out = MMDetRPN(rpn.anchor_generator, rpn.head, 0.7, 0.3, 256, 0.5, pre_nms_top_n=dict(training=2000, testing=1000),
                   post_nms_top_n=dict(training=post_nms_train, testing=post_nms_test),
                   nms_thresh=0.7)
    out.proposal_matcher = FlooredMatcher(0.7, 0.3, min_pos_iou=0.3)
    return out


def _mmdet_roi_heads(heads: RoIHeads, roi_batch: int) -> MMDetRoIHeads:
    return MMDetRoIHeads(heads.box_roi_pool, heads.box_head, heads.box_predictor, 0.5, 0.5, roi_batch, 0.25,
                         (10.0, 10.0, 5.0, 5.0), heads.score_thresh, heads.nms_thresh,
                         heads.detections_per_img, mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head,
                         mask_predictor=heads.mask_predictor)


def build_mask_rcnn(model_name: str, num_classes: int = 80, *, min_size: int = 800, max_size: int = 1333,
                    backbone_weights: str | Path | None = None, width: int = 256, fc: int = 1024,
                    rpn_post_nms_train: int = 1000, rpn_post_nms_test: int = 1000, roi_batch: int = 512,
                    **kwargs) -> MaskRCNN:
    """Mask R-CNN (mmdet's ``mask_rcnn_r50_fpn_1x`` with a RepNeXt backbone) for ``num_classes`` foreground
    classes; images are resized to ``min_size`` / ``max_size`` (mmdet's ``img_scale=(1333, 800)``).
    ``backbone_weights``: ImageNet weights for the backbone. mmdet's values unless a small profile lowers them:
    ``width`` (FPN, RPN and mask head channels, 256), ``fc`` (the box head's fc width, 1024), proposals kept per
    image in training / test (1000 / 1000), ``roi_batch`` (RoIs sampled per image, 512). ``kwargs`` go to
    torchvision's ``MaskRCNN`` (``box_*`` test settings; the RPN and sampling settings are mmdet's, fixed here)."""
    backbone = RepNeXtFPN(model_name, width, extra_level=True, weights=backbone_weights)
    names = ["0", "1", "2", "3"]
    model = MaskRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
        rpn_anchor_generator=MMDetAnchorGenerator(ANCHOR_SIZES, ANCHOR_RATIOS),
        box_roi_pool=AlignedRoIAlign(names, 7, backbone.strides),
        mask_roi_pool=AlignedRoIAlign(names, 14, backbone.strides), box_head=TwoMLPHead(width * 49, fc),
        box_predictor=FastRCNNPredictor(fc, num_classes + 1), mask_head=MaskRCNNHeads(width, [width] * 4, 1),
        mask_predictor=MaskRCNNPredictor(width, width, num_classes + 1), **kwargs)
    model.rpn = _mmdet_rpn(model.rpn, rpn_post_nms_train, rpn_post_nms_test)
    model.roi_heads = _mmdet_roi_heads(model.roi_heads, roi_batch)
    _init_box_head(model)
    return model
