"""Dense prediction on a RepNeXt backbone: Mask R-CNN on COCO 2017 and Semantic FPN on ADE20K.

The models are torchvision's detection models and ops around a timm ``features_only`` RepNeXt, configured to
match the official mmdet/mmseg runs where that changes numbers (``../shared/reference/dense.md`` is the
protocol; the README lists what still differs). Modules:

* ``detection``: ``build_mask_rcnn(model_name, num_classes=80)``;
* ``segmentation``: ``build_semantic_fpn(model_name, num_classes=150)``;
* ``coco`` / ``ade``: the datasets (pycocotools; ADE20K with mmseg's pipelines) and their evaluation;
* ``synthetic``: the smoke sets (digits on canvases in both layouts), made on first use;
* ``protocol``: the settings per task and profile; ``engine``: training and evaluation (resumable, DDP);
* ``experiment``: one cell of the ``detection`` / ``segmentation`` table (what the notebooks call).

Record schema (``record.json`` ``metrics`` of a run of the ``detection`` / ``segmentation`` tables; the
official-log importer writes the same keys). Percent, floats:

* detection: ``box_ap``, ``box_ap50``, ``box_ap75``, ``mask_ap``, ``mask_ap50``, ``mask_ap75`` (all six at the
  evaluation with the highest ``box_ap``, the first if tied), ``box_ap_final`` (``box_ap`` at the last
  evaluation), ``best_epoch`` (1-based epoch of that best evaluation, an int);
* segmentation: ``miou`` (the last evaluation, as the official runs report), ``miou_best`` (the highest over the
  evaluations), ``best_iter`` (the iteration of ``miou_best``), ``aacc``, ``macc`` (the last evaluation).
"""
