"""Profiles: how a recipe is scaled to a machine. Data, not branches in the training loop.

``full``: the paper's settings (224 px, the recipe's epochs and total batch, the RegNetY-16GF teacher from a
user file, AMP on CUDA, channels_last everywhere). ``smoke``: the same recipe on a 2-core CPU in minutes (32 px,
a few epochs, batch 64, a small teacher trained here); every code path runs, accuracies are not the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError
from .recipes import Recipe


@dataclass(frozen=True)
class Profile:
    name: str
    img_size: int
    data: str                               # default dataset
    substitute_data: bool = False           # tables run on ``data`` instead of the paper's datasets
    epochs: int | None = None               # None: the recipe's
    cooldown_epochs: int | None = None      # None: the recipe's (epochs - sched_epochs)
    batch_size: int | None = None           # total batch; None: the recipe's
    workers: int = 8
    amp: str = "bfloat16"                   # autocast dtype on CUDA ("none" to disable); CPU runs in float32
    channels_last: bool = True              # on every device (oneDNN runs depthwise convs 3-5x faster in it)
    teacher: str | None = None              # None: the recipe's teacher (its weights come from a user file)
    teacher_epochs: int = 0                 # >0: train the teacher here when no file is given
    recipe_overrides: dict = field(default_factory=dict)
    description: str = ""

    def epochs_for(self, paper_epochs: int, recipe_epochs: int = 300) -> int:
        """A table's epoch budget under this profile: the paper's, or, when the profile sets its own
        ``epochs`` for the recipe's budget, scaled alike (smoke: 120 -> 1; 100/200/300/400 -> 1/2/3/4)."""
        if self.epochs is None:
            return paper_epochs
        return max(1, round(paper_epochs * self.epochs / recipe_epochs))

    def dataset_for(self, paper_data: str) -> str:
        """The dataset a table's run uses under this profile: the paper's (full), or the profile's own."""
        return self.data if self.substitute_data else paper_data

    def apply(self, recipe: Recipe) -> Recipe:
        """The recipe as this profile runs it."""
        recipe = recipe.replace(**self.recipe_overrides)
        if self.epochs is not None:
            recipe = recipe.with_epochs(self.epochs, self.cooldown_epochs)
        if self.batch_size is not None:
            recipe = recipe.replace(batch_size=self.batch_size, distill_batch_size=self.batch_size)
        return recipe


FULL = Profile(
    name="full", img_size=224, data="imagenet",
    description="the paper's settings: 224 px, the recipe's epochs and batch, ImageNet or CIFAR-100 from user paths",
)

SMOKE = Profile(
    name="smoke", img_size=32, data="digits", substitute_data=True, epochs=3, cooldown_epochs=1, batch_size=64,
    workers=0,
    teacher="resnet10t", teacher_epochs=3,
    # every table on a 2-core CPU in minutes: 3 epochs (about 84 % top-1 on the digits for M0) and batch 64
    # (1.7x the images/s of batch 32 here: per-step overhead dominates at 32 px). The linear-scaling rule
    # (1.2e-4 at batch 64) would not move a net in 3 epochs; one warmup epoch and no epoch of lag at the
    # warmup lr (main.py's late scheduler step): a short run cannot spare it
    recipe_overrides=dict(base_lr=2e-3, lr_ref_batch=None, warmup_epochs=1, warmup_lr=2e-4, lr_epoch_lag=0,
                          scale=(0.35, 1.0)),
    description="2-core CPU in minutes: 32 px, epochs scaled by 1/100 (300 -> 3, 120 -> 1), batch 64, "
                "scikit-learn's digits, a small teacher",
)

PROFILES = {p.name: p for p in (FULL, SMOKE)}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    return PROFILES[name]


def for_profile(value, profile: str):
    """``value`` as ``profile`` runs it: a per-profile value (a dict whose keys are profile names, as a table
    spec's ``{smoke = 2, full = 20}``) becomes its ``profile`` entry, at any depth of nested dicts (e.g. a spec's
    ``backbone_run = {..., distillation = {smoke = false, full = true}}``); other values stay as they are."""
    if not isinstance(value, dict):
        return value
    if value and set(value) <= set(PROFILES):
        if profile not in value:
            raise ConfigError(f"no value for profile {profile!r} in {value!r}; give one per profile "
                             f"({', '.join(PROFILES)})")
        return for_profile(value[profile], profile)
    return {k: for_profile(v, profile) for k, v in value.items()}
