"""The paper's two training recipes, as data (facts from the official main.py / moganet_train.py).

``repvit``: the RepViT/DeiT recipe behind the main table, the compact runs and the ablations.
``starnet``: the StarNet/MogaNet recipe behind the README's StarNet-strategy table.
``python -m repnext.recipes`` prints both side by side.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str
    # schedule and batch
    epochs: int                      # epochs the loop runs (cooldown included)
    sched_epochs: int                # the cosine's length (t_initial)
    batch_size: int                  # total batch without distillation
    distill_batch_size: int          # total batch of the distilled runs
    base_lr: float                   # lr at ``lr_ref_batch`` (or absolute when lr_ref_batch is None)
    lr_ref_batch: int | None         # linear scaling: lr = base_lr * batch / lr_ref_batch
    warmup_epochs: int
    warmup_lr: float
    min_lr: float
    lr_epoch_lag: int                # the lr of epoch e is the schedule at e - lag (main.py steps it late)
    # optimizer
    opt: str
    weight_decay: float
    opt_eps: float
    clip_grad: float | None
    clip_mode: str
    ema_decay: float | None          # None: no EMA. The EMA is kept in checkpoints, never evaluated
    dist_bn: str                     # BN statistics before eval under DDP: rank 0's ("broadcast") or "reduce"d
    # augmentation
    train_interpolation: str
    scale: tuple[float, float]
    hflip: float
    auto_augment: str | None
    color_jitter: float
    reprob: float
    remode: str
    recount: int
    repeated_aug: int                # repeats per image (0: off)
    mixup: float
    cutmix: float
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    smoothing: float
    # evaluation
    eval_crop_pct: float
    eval_interpolation: str
    # distillation (DeiT hard distillation)
    teacher: str
    distill_alpha: float
    distill_tau: float
    seed: int

    def lr(self, batch_size: int) -> float:
        return self.base_lr * batch_size / self.lr_ref_batch if self.lr_ref_batch else self.base_lr

    def total_batch(self, distillation: bool) -> int:
        return self.distill_batch_size if distillation else self.batch_size

    @property
    def cooldown_epochs(self) -> int:
        """Epochs the loop runs after the cosine has ended, at ``min_lr`` (StarNet's 10; RepViT's none)."""
        return self.epochs - self.sched_epochs

    def with_epochs(self, epochs: int, cooldown: int | None = None) -> Recipe:
        """The recipe run for ``epochs`` in all, its cooldown (``cooldown`` in place of its length, for a recipe
        that has one) at the end; a run no longer than the cooldown has none (all of it is the cosine)."""
        kept = cooldown if cooldown is not None and self.cooldown_epochs else self.cooldown_epochs
        return self.replace(epochs=epochs, sched_epochs=epochs - kept if epochs > kept else epochs)

    def replace(self, **changes) -> Recipe:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown recipe field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


REPVIT = Recipe(
    name="repvit",
    epochs=300, sched_epochs=300, batch_size=2048, distill_batch_size=1024,
    base_lr=1e-3, lr_ref_batch=512, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, lr_epoch_lag=1,
    opt="adamw", weight_decay=0.025, opt_eps=1e-8, clip_grad=0.02, clip_mode="agc", ema_decay=0.99996,
    dist_bn="broadcast",
    train_interpolation="bicubic", scale=(0.08, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1",
    color_jitter=0.4, reprob=0.25, remode="pixel", recount=1, repeated_aug=3,
    mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.1,
    eval_crop_pct=224 / 256, eval_interpolation="bicubic",
    teacher="regnety_160", distill_alpha=0.5, distill_tau=1.0, seed=0,
)

STARNET = Recipe(
    name="starnet",
    epochs=310, sched_epochs=300, batch_size=2048, distill_batch_size=1024,
    base_lr=3e-3, lr_ref_batch=None, warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-6, lr_epoch_lag=0,
    opt="adamw", weight_decay=0.025, opt_eps=1e-8, clip_grad=None, clip_mode="norm", ema_decay=None,
    dist_bn="reduce",
    train_interpolation="random", scale=(0.08, 1.0), hflip=0.5, auto_augment="rand-m1-mstd0.5-inc1",
    color_jitter=0.0, reprob=0.25, remode="pixel", recount=1, repeated_aug=0,
    mixup=0.8, cutmix=0.2, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.1,
    eval_crop_pct=0.9, eval_interpolation="bicubic",
    teacher="regnety_160", distill_alpha=0.5, distill_tau=1.0, seed=42,
)

RECIPES = {r.name: r for r in (REPVIT, STARNET)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_table() -> str:
    """Both recipes side by side, one row per field (Markdown)."""
    names = list(RECIPES)
    rows = [f"| field | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    for field in dataclasses.fields(Recipe):
        values = [str(getattr(RECIPES[n], field.name)) for n in names]
        rows.append(f"| {field.name} | {' | '.join(values)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(recipe_table(), end="")
