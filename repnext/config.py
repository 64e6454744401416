"""RunConfig: what one training run is, and the settings it resolves to under its recipe and profile."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from .errors import ConfigError
from .profiles import Profile, get_profile
from .recipes import Recipe, get_recipe

# fields that say where things are, not what the experiment is: not part of the run id
LOCATION_FIELDS = ("data_root", "teacher_checkpoint", "workers", "device")
DATASETS = ("digits", "synthetic", "imagenet", "cifar100")
# the class counts of the papers' datasets; the first is the default where a log says nothing
PAPER_NUM_CLASSES = {"imagenet": 1000, "cifar100": 100}
POSITIVE_FIELDS = ("epochs", "batch_size", "img_size")
MIN_IMG_SIZE = 32  # the models' stem and stages downsample 32x: a smaller input trains on padding


@dataclass(frozen=True)
class RunConfig:
    model: str
    recipe: str = "repvit"
    profile: str = "smoke"
    data: str | None = None              # None: the profile's default dataset
    distillation: bool = False
    epochs: int | None = None            # None: the profile's (or the recipe's)
    batch_size: int | None = None        # total batch; None: the profile's (or the recipe's)
    img_size: int | None = None          # None: the profile's
    lr: float | None = None              # None: the recipe's rule
    seed: int | None = None              # None: the recipe's
    data_root: str | None = None
    teacher_checkpoint: str | None = None
    workers: int | None = None
    device: str = "auto"

    def canonical(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in LOCATION_FIELDS}

    def check(self) -> None:
        """Raise naming the first value no run can use (before anything is built or written)."""
        for name in POSITIVE_FIELDS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.img_size is not None and self.img_size < MIN_IMG_SIZE:
            raise ConfigError(f"--img-size {self.img_size} is below {MIN_IMG_SIZE}, the smallest input the "
                              f"models' stride-32 stem and stages accept")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.model}-{digest}"

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown run config field(s) {sorted(unknown)}; expected {sorted(names)}")
        return cls(**d)

    def resolve(self) -> Settings:
        self.check()
        profile = get_profile(self.profile)
        recipe = profile.apply(get_recipe(self.recipe))
        if self.epochs is not None:
            recipe = recipe.with_epochs(self.epochs)
        if recipe.warmup_epochs >= recipe.epochs:  # a run no longer than its warmup would never leave it
            recipe = recipe.replace(warmup_epochs=recipe.epochs - 1)
        batch = self.batch_size or recipe.total_batch(self.distillation)
        if batch % 2:
            raise ConfigError(f"batch size must be even (mixup pairs samples), got {batch}")
        return Settings(
            config=self, recipe=recipe, profile=profile, data=self.data or profile.data,
            img_size=self.img_size or profile.img_size, batch_size=batch,
            lr=self.lr if self.lr is not None else recipe.lr(batch),
            seed=self.seed if self.seed is not None else recipe.seed,
            workers=self.workers if self.workers is not None else profile.workers,
        )


@dataclass(frozen=True)
class Settings:
    """Every value a run uses, resolved from its config, recipe and profile (written to config.json)."""
    config: RunConfig
    recipe: Recipe
    profile: Profile
    data: str
    img_size: int
    batch_size: int
    lr: float
    seed: int
    workers: int

    def as_dict(self) -> dict:
        recipe = dataclasses.asdict(self.recipe)
        return {
            "run_id": self.config.run_id, "config": dataclasses.asdict(self.config),
            "resolved": {"data": self.data, "img_size": self.img_size, "batch_size": self.batch_size,
                         "lr": self.lr, "seed": self.seed, "workers": self.workers, "recipe": recipe},
        }
