"""The dense tables' training settings per task and profile, as data (full: the official runs, dense.md).

``full`` is mmdet's 1x schedule (Mask R-CNN, COCO) and mmseg's 80k-iteration run (Semantic FPN, ADE20K);
``smoke`` is the same loop on the synthetic sets (``repnext.dense.synthetic``) sized for a 2-core CPU.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import RunConfig
from ..errors import ConfigError

TASKS = ("detection", "segmentation")


@dataclass(frozen=True)
class DenseProtocol:
    task: str
    data: str                            # coco | ade20k | digits (the synthetic set of the task)
    batch_size: int                      # total, over all ranks
    lr: float
    weight_decay: float                  # AdamW, on every parameter
    img_scale: tuple[int, int]           # (long, short) edge limits: mmdet (1333, 800), mmseg (2048, 512)
    epochs: int = 0                      # detection: epochs (an evaluation after each)
    lr_steps: tuple[int, ...] = ()       # detection: epochs after which the lr is multiplied by 0.1
    warmup_iters: int = 0                # linear warmup from warmup_ratio * lr
    warmup_ratio: float = 1e-6
    iters: int = 0                       # segmentation: iterations (poly schedule)
    eval_interval: int = 0               # segmentation: iterations between evaluations
    poly_power: float = 0.9
    min_lr: float = 0.0
    crop: int = 0                        # segmentation: the training crop
    seed: int = 0
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # smoke: narrower heads, fewer RoIs
    evaluate_untrained: bool = False     # also score the model before training (the smoke baseline)

    def total_iters(self, train_size: int) -> int:
        return self.iters or self.epochs * -(-train_size // self.batch_size)

    def summary(self) -> str:
        schedule = (f"epochs={self.epochs} steps={list(self.lr_steps)} warmup={self.warmup_iters}"
                    if self.task == "detection" else
                    f"iters={self.iters} eval_every={self.eval_interval} poly={self.poly_power} crop={self.crop}")
        return (f"task={self.task} data={self.data} batch={self.batch_size} lr={self.lr:.3g} "
                f"wd={self.weight_decay:g} {schedule} img_scale={self.img_scale[0]}x{self.img_scale[1]}")


FULL = {
    "detection": DenseProtocol("detection", "coco", batch_size=16, lr=2e-4, weight_decay=0.05,
                               img_scale=(1333, 800), epochs=12, lr_steps=(8, 11), warmup_iters=500),
    "segmentation": DenseProtocol("segmentation", "ade20k", batch_size=16, lr=1e-4, weight_decay=0.05,
                                  img_scale=(2048, 512), iters=80_000, eval_interval=8_000, min_lr=1e-6, crop=512),
}
# the official M5 detection run used weight decay 0.1 (its log's config)
FULL_OVERRIDES = {("detection", "repnext_m5"): dict(weight_decay=0.1)}

SMOKE = {
    "detection": DenseProtocol("detection", "digits", batch_size=8, lr=1e-3, weight_decay=0.05,
                               img_scale=(128, 96), epochs=6, lr_steps=(5,), warmup_iters=20,
                               model_kwargs=dict(width=64, fc=256, rpn_post_nms_train=256, rpn_post_nms_test=200,
                                                 roi_batch=64, box_detections_per_img=20),
                               evaluate_untrained=True),
    "segmentation": DenseProtocol("segmentation", "digits", batch_size=8, lr=1e-3, weight_decay=0.05,
                                  img_scale=(256, 64), iters=120, eval_interval=60, min_lr=1e-6, crop=64,
                                  model_kwargs=dict(width=64, channels=32),
                                  evaluate_untrained=True),
}
PROTOCOLS = {"full": FULL, "smoke": SMOKE}


def get_protocol(task: str, config: RunConfig) -> DenseProtocol:
    """The settings of ``config``'s run of ``task``: its profile's, then the config's explicit values."""
    if task not in TASKS:
        raise ConfigError(f"unknown dense task {task!r}; expected one of {', '.join(TASKS)}")
    if config.profile not in PROTOCOLS:
        raise ConfigError(f"unknown profile {config.profile!r}; expected one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[config.profile][task]
    changes = dict(FULL_OVERRIDES.get((task, config.model), {})) if config.profile == "full" else {}
    for name in ("batch_size", "lr", "seed"):
        if getattr(config, name) is not None:
            changes[name] = getattr(config, name)
    if config.epochs is not None:
        changes["epochs" if task == "detection" else "iters"] = config.epochs
    return dataclasses.replace(p, **changes)
