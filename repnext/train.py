"""The training and evaluation engine: one run of a recipe under a profile, resumable at any point.

    python -m repnext.train --model repnext_m0 --recipe repvit --profile smoke --data digits --output results/x

The same function, ``train(RunConfig(...), output)``, is what the notebooks call. A run writes its folder of
the results store (``repnext.results``): config.json, log.txt (one DeiT-schema JSON line per epoch),
checkpoint.pth (every epoch, atomically; also mid-epoch on SIGTERM/SIGUSR2 and every
``checkpoint_interval`` seconds) and, at the end, record.json. Starting a run whose folder holds a
checkpoint resumes it and finishes with the same log and metrics as an uninterrupted run: data order,
augmentation and mixup are seeded by (seed, epoch, position), not by process state.
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m repnext.train: a bad argument is answered before the imports below
    from repnext.cli import reject_bad_train_arguments

    reject_bad_train_arguments()

import dataclasses
import functools
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup, create_transform, resolve_data_config
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3, accuracy, dispatch_clip_grad, distribute_bn
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from .checkpoint import CheckpointError, adapt_state_dict, read_checkpoint
from .cli import parse_train_arguments
from .complexity import count_macs, count_params, inference_form
from .config import RunConfig, Settings
from .data import DatasetError, DataSplits, Transformed, build_dataset, sample_seed, seed_everything
from .errors import RepnextError
from .lock import holds_run_lock
from .messages import first_line
from .models import is_repnext
from .preflight import check_device, check_model, check_resumable, check_run_folder
from .recipes import Recipe
from .runtime import Dist, all_sum, environment, init_distributed, launch_env, lost_peer
from .store import RunPaths, load_checkpoint, read_json, save_checkpoint, write_json, write_log, write_record

INTERRUPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)  # what SLURM sends before time-out or preemption


class TrainingError(RuntimeError):
    """A run that cannot start or cannot go on (bad input, diverged loss, a lost peer)."""

    def __init__(self, message: str, every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank  # every rank raises it alike (bad input): rank 0 alone reports it


class Interrupted(Exception):
    """The run checkpointed and stopped on request; starting it again resumes it."""


class StopRequests:
    """A ``should_stop`` for ``train``: true once SIGTERM/SIGUSR2 arrived (what SLURM sends before a time-out
    or preemption) or ``stop_file`` was touched after entry (how a job controller that does not share our
    process, e.g. the one running a notebook's kernel, asks for a checkpoint). A context manager: the signal
    handlers are installed on entry and restored on exit."""

    def __init__(self, stop_file: Path | None = None, poll_s: float = 2.0):
        self.stop_file, self.poll_s = stop_file, poll_s
        self.received: list[int] = []
        self._since = self._polled = 0.0
        self._handlers: dict = {}

    def __enter__(self) -> StopRequests:
        self._since = time.time()
        self._handlers = {sig: signal.signal(sig, lambda signum, frame: self.received.append(signum))
                          for sig in INTERRUPT_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        if self.received:
            return True
        # polled every step: stat the file at most every poll_s (a shared filesystem's metadata server
        # serves every rank of every job)
        if self.stop_file is None or time.monotonic() - self._polled < self.poll_s:
            return False
        self._polled = time.monotonic()
        try:
            return self.stop_file.stat().st_mtime >= self._since
        except FileNotFoundError:
            return False


# --- data ------------------------------------------------------------------------------------------------

class PositionedSampler(Sampler):
    """Yields (epoch, position, index) from a base sampler, starting at ``start`` (to resume mid-epoch). The
    epoch and the position, made unique across ranks, seed the sample's augmentation; they travel with the
    index because the sampler runs in this process and persistent workers keep their own dataset copy."""

    def __init__(self, base: Sampler | list[int], env: Dist):
        self.base, self.env, self.start, self.epoch = base, env, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) - self.start

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for position, index in enumerate(self.base):
            if position >= self.start:
                yield self.epoch, position * self.env.world + self.env.rank, index


class EpochPermutation(Sampler):
    """A shuffled order of this rank's share of the data, fixed by (seed, epoch)."""

    def __init__(self, n: int, seed: int, env: Dist):
        self.n, self.seed, self.env, self.epoch = n, seed, env, 0
        self.num_samples = n // env.world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        return iter(order[self.env.rank:self.num_samples * self.env.world:self.env.world])


def build_loaders(s: Settings, splits: DataSplits, env: Dist, model: nn.Module):
    r = s.recipe
    data_cfg = resolve_data_config({}, model=model)
    train_tf = create_transform(
        s.img_size, is_training=True, scale=r.scale, hflip=r.hflip if splits.hflip_ok else 0.0,
        color_jitter=r.color_jitter, auto_augment=r.auto_augment, interpolation=r.train_interpolation,
        re_prob=r.reprob, re_mode=r.remode, re_count=r.recount, mean=data_cfg["mean"], std=data_cfg["std"],
    )
    eval_tf = create_transform(
        s.img_size, is_training=False, crop_pct=r.eval_crop_pct, interpolation=r.eval_interpolation,
        mean=data_cfg["mean"], std=data_cfg["std"],
    )
    train_set = Transformed(splits.train, train_tf, s.seed)
    if r.repeated_aug:
        base = RepeatAugSampler(splits.train, num_replicas=env.world, rank=env.rank, shuffle=True,
                                num_repeats=r.repeated_aug)
    else:
        base = EpochPermutation(len(splits.train), s.seed, env)
    per_rank = s.batch_size // env.world  # exact: check_batch refused a total that does not split
    if len(base) < per_rank:
        raise TrainingError(f"{len(base)} training samples per process is less than one batch of {per_rank}; "
                            "lower --batch-size")
    sampler = PositionedSampler(base, env)
    workers = dict(num_workers=s.workers, persistent_workers=s.workers > 0, pin_memory=torch.cuda.is_available())
    train = DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=True, **workers)
    val_set = Transformed(splits.val, eval_tf, s.seed)
    val_indices = list(range(len(splits.val)))[env.rank::env.world]  # every sample once, no padding
    val = DataLoader(val_set, batch_size=per_rank, sampler=PositionedSampler(val_indices, Dist()), **workers)
    return train, val


# --- losses ----------------------------------------------------------------------------------------------

class DistillationLoss(nn.Module):
    """DeiT's distillation loss: the class head learns the (mixed) targets, the distillation head the
    teacher's hard decision; ``alpha`` weighs the two. Without a teacher, the base criterion only."""

    def __init__(self, base: nn.Module, teacher: nn.Module | None = None, alpha: float = 0.5, kind: str = "hard",
                 tau: float = 1.0):
        super().__init__()
        if kind not in ("hard", "soft"):
            raise ValueError(f"distillation kind must be 'hard' or 'soft', got {kind!r}")
        self.base, self.teacher, self.alpha, self.kind, self.tau = base, teacher, alpha, kind, tau

    def forward(self, inputs: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            if isinstance(outputs, tuple):
                raise TrainingError("the model returned two heads but no teacher was given")
            return self.base(outputs, targets)
        if not isinstance(outputs, tuple):
            raise TrainingError("distillation needs the model's (head, head_dist) outputs in training mode")
        outputs, outputs_dist = outputs
        base_loss = self.base(outputs, targets)
        with torch.no_grad():
            teacher_out = self.teacher(inputs)
        if self.kind == "hard":
            dist_loss = F.cross_entropy(outputs_dist, teacher_out.argmax(dim=1))
        else:
            t = self.tau
            dist_loss = F.kl_div(F.log_softmax(outputs_dist / t, 1), F.log_softmax(teacher_out / t, 1),
                                 reduction="batchmean", log_target=True) * t * t
        return base_loss * (1 - self.alpha) + dist_loss * self.alpha


# --- building --------------------------------------------------------------------------------------------

def device_for(name: str, env: Dist, cuda_devices: int) -> str:
    """The device of this rank with ``cuda_devices`` GPUs visible: on CUDA, cuda:LOCAL_RANK (modulo the GPUs
    it sees: one when SLURM binds a GPU to each task), so that no two ranks of a node share a GPU."""
    if name == "auto":
        name = "cuda" if cuda_devices else "cpu"
    if not name.startswith("cuda"):
        return name
    if not cuda_devices:
        raise TrainingError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto",
                            every_rank=True)
    if name != "cuda" and env.world > 1:
        raise TrainingError(f"--device {name} with {env.world} processes: each process runs on its own GPU "
                            "(cuda:LOCAL_RANK); use --device cuda or auto", every_rank=True)
    return name if name != "cuda" else f"cuda:{env.local_rank % cuda_devices}"


def pick_device(name: str, env: Dist | None = None) -> torch.device:
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return torch.device(device_for(name, env or Dist(), cuda_devices))


def amp_dtype(amp: str, capability: tuple[int, int] | None) -> str:
    """The autocast dtype on a GPU of compute ``capability`` (None: no GPU, float32 throughout). bfloat16 is
    emulated below sm80: float16 with a GradScaler there, as the official recipe runs."""
    if capability is None or amp == "none":
        return "none"
    return "float16" if amp == "bfloat16" and tuple(capability) < (8, 0) else amp


def check_batch(batch: int, world: int, mixup: bool) -> int:
    """The per-process batch; a total that does not split into equal per-process batches (even ones for
    mixup, which pairs samples) is refused before anything starts, naming the nearest valid totals."""
    unit = world * (2 if mixup else 1)
    if batch % unit == 0:
        return batch // world
    nearest = " or ".join(str(b) for b in (batch // unit * unit, (batch // unit + 1) * unit) if b > 0)
    kind = "even " if mixup else ""
    raise TrainingError(f"--batch-size {batch} does not split over {world} processes into equal {kind}"
                        f"per-process batches; nearest valid: {nearest}", every_rank=True)


def create_student(s: Settings, num_classes: int) -> nn.Module:
    kwargs = dict(num_classes=num_classes)
    if s.config.distillation:
        if not is_repnext(s.config.model):
            raise TrainingError(f"distillation needs a model with a distillation head; {s.config.model} has none")
        kwargs["distillation"] = True
    try:
        return timm.create_model(s.config.model, **kwargs)
    except RuntimeError as e:
        raise TrainingError(f"cannot build model {s.config.model!r}: {e}") from None


def build_teacher(s: Settings, splits: DataSplits, output: Path, device: torch.device, progress: bool) -> nn.Module:
    name = s.profile.teacher or s.recipe.teacher
    if s.config.teacher_checkpoint:
        path = Path(s.config.teacher_checkpoint).expanduser()
        if not path.is_file():
            raise TrainingError(f"teacher checkpoint {path} does not exist")
    elif s.profile.teacher_epochs:
        # a small teacher trained here, by this engine, on the same data; it does not depend on the student,
        # so the runs beside this one (a table's folder) share it: trained once, then resumed as complete
        teacher_cfg = dataclasses.replace(
            s.config, model=name, distillation=False, epochs=s.profile.teacher_epochs, teacher_checkpoint=None)
        folder = output.parent / ".teachers" / teacher_cfg.run_id
        train(teacher_cfg, folder, progress=progress, wait_for_lock=True)
        path = RunPaths(folder).checkpoint
    else:
        raise TrainingError(f"distillation with the {s.profile.name} profile needs --teacher-checkpoint "
                            f"(weights of {name}, e.g. DeiT's regnety_160-a5fe301d.pth)")
    return load_teacher(name, path, splits.num_classes).to(device).eval().requires_grad_(False)


def load_teacher(name: str, path: Path, num_classes: int) -> nn.Module:
    """The teacher with every weight of ``path``, its classifier included: loaded strictly, never through
    timm's pretrained path (which drops a classifier of another class count than 1000 and loads the rest
    non-strictly, leaving a random head)."""
    teacher = timm.create_model(name, num_classes=num_classes)
    try:
        teacher.load_state_dict(adapt_state_dict(read_checkpoint(path), teacher), strict=True)
    except CheckpointError as e:
        raise TrainingError(f"cannot load teacher {name} ({num_classes} classes) from {path}: {e}") from None
    return teacher


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> CosineLRScheduler:
    return CosineLRScheduler(optimizer, t_initial=recipe.sched_epochs, lr_min=recipe.min_lr,
                             warmup_t=recipe.warmup_epochs, warmup_lr_init=recipe.warmup_lr, t_in_epochs=True)


def set_epoch_lr(scheduler: CosineLRScheduler, recipe: Recipe, epoch: int) -> float:
    """Set and return the lr of ``epoch``. main.py steps its scheduler after each epoch with the index of the
    epoch just run, so its epoch e trains at the schedule's value for e - 1 (``lr_epoch_lag``)."""
    scheduler.step(max(epoch - recipe.lr_epoch_lag, 0))
    return scheduler.optimizer.param_groups[0]["lr"]


# --- the loop --------------------------------------------------------------------------------------------

def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "none":
        return nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, amp))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, env: Dist, amp: str = "none",
             channels_last: bool = False) -> dict:
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, correct@1, correct@5, n
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            out = model(x)
        out = out.float()
        top1, top5 = accuracy(out, y, topk=(1, min(5, out.shape[1])))
        n = y.shape[0]
        sums = [sums[0] + F.cross_entropy(out, y, reduction="sum").item(), sums[1] + top1.item() * n / 100,
                sums[2] + top5.item() * n / 100, sums[3] + n]
    loss, c1, c5, n = all_sum(sums, env)
    return {"loss": loss / n, "acc1": 100 * c1 / n, "acc5": 100 * c5 / n, "n": int(n)}


def train_step(ddp_model: nn.Module, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None, recipe: Recipe, x: torch.Tensor, y: torch.Tensor,
               amp: str) -> torch.Tensor:
    """One optimisation step; returns the loss, left on the device (reading it would wait for the GPU)."""
    with _autocast(x.device, amp):
        loss = criterion(x, ddp_model(x), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if recipe.clip_grad is not None:
        dispatch_clip_grad(model.parameters(), recipe.clip_grad, mode=recipe.clip_mode)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()


def check_launch(settings: Settings) -> tuple[Dist, torch.device]:
    """This process's rank and device, refusing before anything is written or started a batch that does not
    split over the ranks and a GPU index under DDP."""
    launched = launch_env()
    recipe = settings.recipe
    check_batch(settings.batch_size, launched.world, recipe.mixup > 0 or recipe.cutmix > 0)
    return launched, pick_device(settings.config.device, launched)


NONFINITE = (math.nan, math.inf, -math.inf)


def agree(env: Dist, stop: bool, save: bool, bad_step: torch.Tensor, bad_loss: torch.Tensor
          ) -> tuple[bool, bool, tuple[int, int, float] | None]:
    """What every rank does next, in one collective every few steps (not one a step): stop if any rank was
    asked to, save if rank 0's clock says a periodic checkpoint is due, fail if any rank's loss was not
    finite, naming the first such (rank, step, loss). ``bad_step``: this rank's first such step, or -1."""
    step, loss = torch.stack([bad_step, bad_loss]).tolist()  # the one wait for the device
    slots = [0.0] * (2 * env.world)  # per rank: its first non-finite step + 1 and which value (1, 2, 3)
    if step >= 0:
        slots[2 * env.rank:2 * env.rank + 2] = [step + 1, 1 + [math.isnan(loss), loss > 0, loss < 0].index(True)]
    flags = all_sum([float(stop), float(save and env.main), *slots], env)
    bad = [(int(flags[2 + 2 * r]) - 1, r, NONFINITE[int(flags[3 + 2 * r]) - 1]) for r in range(env.world)
           if flags[2 + 2 * r]]
    first = min(bad) if bad else None
    return flags[0] > 0, flags[1] > 0, (first[1], first[0], first[2]) if first else None


def lost_peer_message(error: BaseException, env: Dist) -> str:
    others = [r for r in range(env.world) if r != env.rank]
    who = f"rank {others[0]}" if len(others) == 1 else f"one or more of ranks {others}"
    return f"lost {who} (its process ended or its node failed): {first_line(error)[:300]}"


def make_run_folder(root: Path) -> None:
    """Create the run's folder (and its parents), refusing in one line one that cannot be made or written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"cannot create output folder {root}: {e.strerror}") from None
    if not os.access(root, os.W_OK):
        raise TrainingError(f"output folder {root} is not writable")


# --- one run, in pieces ----------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainState:
    """Where a run stands, beside its weights: what checkpoint.pth holds under these keys (those of every
    earlier checkpoint) and ``preflight.TRAINING_KEYS`` asks for. No random state: data order, augmentation
    and mixup are seeded by (seed, epoch, position), so ``epoch`` and ``step`` place the sampler too."""

    epoch: int = 0  # epochs done
    step: int = 0  # steps done of epoch ``epoch``: non-zero in a mid-epoch checkpoint only
    # those steps' loss sum, steps and samples over all ranks (train_loss resumes exactly)
    partial: list = dataclasses.field(default_factory=lambda: [0.0, 0, 0])
    history: list[dict] = dataclasses.field(default_factory=list)  # the log's lines, one an epoch
    best: dict | None = None  # top-1, top-5 and epoch of the best evaluation
    train_time: float = 0.0  # seconds spent in training steps, over every attempt
    train_samples: int = 0

    def state_dict(self) -> dict:
        """Plain containers, numbers and strings: what ``torch.load(weights_only=True)`` reads back."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping) -> None:
        """Take every field from ``state`` (a checkpoint: its other keys are the weights')."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, state[field.name])


def resume(path: Path, state: dict | TrainState, **parts: object) -> None:
    """Restore ``state`` (a ``TrainState``, or a dict whose keys are restored) and every part's ``state_dict``
    (those not None and kept in the checkpoint; the model and optimizer always are) from the checkpoint at
    ``path``."""
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # a foreign or truncated file: say which, touch nothing
        raise TrainingError(f"cannot resume from {path}: {first_line(e)}") from None
    for key, part in parts.items():
        if part is not None and (key in ("model", "optimizer") or ckpt.get(key) is not None):
            part.load_state_dict(ckpt[key])
    if isinstance(state, TrainState):
        state.load_state_dict(ckpt)
    else:
        state.update({k: ckpt[k] for k in state})


@dataclasses.dataclass
class Run:
    """One attempt at a run: what it is, where it writes, who this rank is, and how the loop is steered."""

    config: RunConfig
    settings: Settings
    paths: RunPaths
    env: Dist
    device: torch.device
    progress: bool
    should_stop: Callable[[], bool] | None
    checkpoint_interval: float
    sync_steps: int
    last_save: float = 0.0  # time.monotonic() of the last checkpoint: rank 0's clock decides periodic saves

    @functools.cached_property
    def amp(self) -> str:
        capability = torch.cuda.get_device_capability(self.device) if self.device.type == "cuda" else None
        return amp_dtype(self.settings.profile.amp, capability)

    @property
    def channels_last(self) -> bool:
        return self.settings.profile.channels_last

    def save_due(self) -> bool:
        return self.env.main and time.monotonic() - self.last_save > self.checkpoint_interval


@dataclasses.dataclass
class Parts:
    """What the loop trains and evaluates with."""

    model: nn.Module
    ddp_model: nn.Module  # the model, wrapped by DDP when there are several ranks
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    ema: ModelEmaV3 | None
    scaler: torch.amp.GradScaler | None
    mixup: Mixup | None
    criterion: DistillationLoss
    train_loader: DataLoader
    val_loader: DataLoader
    splits: DataSplits
    n_parameters: int


class Scores(NamedTuple):
    final: dict  # the trained model's evaluation at the end
    fused: dict  # its inference form's
    fused_model: nn.Module
    eval_seconds: float  # of the final evaluation


def open_run_folder(paths: RunPaths, config: RunConfig) -> dict | None:
    """Create or check the run's folder; returns the record of a run that is complete already."""
    make_run_folder(paths.root)
    check_run_folder(paths, config)
    record = read_json(paths.record)
    if record is not None and record.get("status") == "complete":
        return record
    check_resumable(paths.checkpoint, config.run_id)
    return None


def build_models(run: Run, splits: DataSplits) -> tuple[nn.Module, nn.Module | None]:
    """The student on its device and, for a distilled run, the frozen teacher."""
    model = create_student(run.settings, splits.num_classes).to(run.device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = None
    if run.config.distillation:
        teacher = build_teacher(run.settings, splits, run.paths.root, run.device, run.progress)
        if run.channels_last:  # it sees the student's channels_last input
            teacher = teacher.to(memory_format=torch.channels_last)
    return model, teacher


def build_criterion(recipe: Recipe, num_classes: int, teacher: nn.Module | None) -> tuple[Mixup | None, nn.Module]:
    """Mixup/CutMix (None without them) and the loss, distilled when there is a teacher."""
    mixup = None
    if recipe.mixup > 0 or recipe.cutmix > 0:
        mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                      switch_prob=recipe.mixup_switch_prob, mode=recipe.mixup_mode,
                      label_smoothing=recipe.smoothing, num_classes=num_classes)
        base_criterion = SoftTargetCrossEntropy()
    elif recipe.smoothing:
        base_criterion = LabelSmoothingCrossEntropy(recipe.smoothing)
    else:
        base_criterion = nn.CrossEntropyLoss()
    return mixup, DistillationLoss(base_criterion, teacher, recipe.distill_alpha, "hard", recipe.distill_tau)


def build_parts(run: Run) -> Parts:
    """Everything the loop uses; config.json is written once the data, models and loaders were accepted (a
    failed start claims no folder). The order is the random generator's: it must not change."""
    s, env = run.settings, run.env
    try:
        splits = build_dataset(s.data, run.config.data_root, s.img_size)
    except DatasetError as e:
        raise TrainingError(str(e)) from None
    seed_everything(sample_seed(s.seed, env.rank))
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
    model, teacher = build_models(run, splits)
    train_loader, val_loader = build_loaders(s, splits, env, model)
    if env.main:
        write_json(run.paths.config, s.as_dict())
    recipe = s.recipe
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=s.lr, weight_decay=recipe.weight_decay,
                                    eps=recipe.opt_eps)
    scheduler = build_scheduler(optimizer, recipe)
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay else None
    scaler = torch.amp.GradScaler("cuda") if run.amp == "float16" else None
    mixup, criterion = build_criterion(recipe, splits.num_classes, teacher)
    ddp_model = model
    if env.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device] if run.device.type == "cuda" else None)
    return Parts(model, ddp_model, optimizer, scheduler, ema, scaler, mixup, criterion, train_loader, val_loader,
                 splits, count_params(model))


def resume_state(run: Run, parts: Parts) -> TrainState:
    """A fresh state, or the one of the folder's checkpoint with the parts' states restored."""
    state = TrainState()
    if run.paths.checkpoint.is_file():
        resume(run.paths.checkpoint, state, model=parts.model, optimizer=parts.optimizer, ema=parts.ema,
               scaler=parts.scaler)
    return state


def save_state(run: Run, parts: Parts, state: TrainState) -> None:
    """Rank 0 writes checkpoint.pth (atomically): the parts' states and ``state``."""
    if run.env.main:
        save_checkpoint(run.paths.checkpoint, {
            "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            **state.state_dict(), "run_id": run.config.run_id,
        })
    run.last_save = time.monotonic()


def failure(run: Run, error: str, **where: int) -> TrainingError:
    """The error that ends the run; rank 0 writes it, and where it happened, as the failed record."""
    if run.env.main:
        write_record(run.paths.record, {"status": "failed", "run_id": run.config.run_id, "error": error, **where})
    return TrainingError(error)


class EpochSums:
    """This rank's running loss sum, steps and samples of an epoch, and its first non-finite loss (step -1:
    none yet); the tensors stay on the device, so that a step does not wait for the GPU."""

    def __init__(self, partial: list, device: torch.device):
        self.loss = torch.tensor(float(partial[0]), dtype=torch.float64, device=device)
        self.steps, self.samples = partial[1], partial[2]
        self.bad_step = torch.tensor(-1.0, dtype=torch.float64, device=device)
        self.bad_loss = torch.zeros_like(self.bad_step)

    def add(self, loss: torch.Tensor, step: int, samples: int) -> None:
        self.loss += loss
        self.steps, self.samples = self.steps + 1, self.samples + samples
        new_bad = (self.bad_step < 0) & ~torch.isfinite(loss)
        self.bad_step = torch.where(new_bad, step, self.bad_step)
        self.bad_loss = torch.where(new_bad, loss, self.bad_loss)

    def values(self) -> list[float]:
        return [self.loss.item(), self.steps, self.samples]


def prepare_batch(run: Run, parts: Parts, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if parts.mixup is not None:  # seeded by the step, not by process state: a resumed run mixes alike
        seed_everything(sample_seed(run.settings.seed, epoch, step, run.env.rank, 1))
        x, y = parts.mixup(x, y)
    return x, y


def agree_or_fail(run: Run, sums: EpochSums, stop: bool, save: bool, epoch: int, lr: float) -> tuple[bool, bool]:
    """Whether every rank stops, and saves, now (``agree``); a non-finite loss on any rank ends the run."""
    stop, save, bad = agree(run.env, stop, save, sums.bad_step, sums.bad_loss)
    if bad is not None:
        rank, bad_at, value = bad
        where = f" on rank {rank}" if run.env.world > 1 else ""
        error = f"loss is {value} at epoch {epoch}, step {bad_at}{where} (lr {lr:.3g}); the run diverged"
        raise failure(run, error, epoch=epoch, step=bad_at, rank=rank)
    return stop, save


def train_epoch(run: Run, parts: Parts, state: TrainState, epoch: int, lr: float) -> list[float]:
    """Train epoch ``epoch`` from step ``state.step``; returns its loss sum, steps and samples over all ranks.
    The ranks agree every ``sync_steps`` steps and at the last; stopped, the run checkpoints and raises
    ``Interrupted``."""
    env, loader, start = run.env, parts.train_loader, state.step
    # a mid-epoch checkpoint holds the global partial sums: rank 0 resumes with them, the others at zero
    sums = EpochSums(state.partial if start and env.main else [0.0, 0, 0], run.device)
    loader.sampler.set_epoch(epoch)
    loader.sampler.start = start * loader.batch_size
    parts.ddp_model.train()
    t0, last_step, stop = time.perf_counter(), start + len(loader) - 1, False
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{run.settings.recipe.epochs}", unit="step", leave=False,
               disable=not (run.progress and env.main), initial=start, total=start + len(loader))
    for step, (x, y) in enumerate(bar, start=start):
        x, y = prepare_batch(run, parts, x, y, epoch, step)
        loss = train_step(parts.ddp_model, parts.model, parts.criterion, parts.optimizer, parts.scaler,
                          run.settings.recipe, x, y, run.amp).double()
        if parts.ema is not None:
            parts.ema.update(parts.model)
        sums.add(loss, step, x.shape[0])
        stop = stop or (run.should_stop is not None and run.should_stop())
        save = run.save_due()
        if not ((env.world == 1 and (stop or save)) or (step + 1) % run.sync_steps == 0 or step == last_step):
            continue
        stop, save = agree_or_fail(run, sums, stop, save, epoch, lr)
        if not bar.disable:
            bar.set_postfix(loss=f"{sums.loss.item() / sums.steps:.3f}", lr=f"{lr:.2e}")
        if stop or save:
            state.train_time += time.perf_counter() - t0
            t0 = time.perf_counter()
            state.step, state.partial = step + 1, all_sum(sums.values(), env)  # collective
            save_state(run, parts, state)
            if stop:
                raise Interrupted(f"checkpointed at epoch {epoch}, step {step + 1}; run again to resume")
    bar.close()
    state.train_time += time.perf_counter() - t0
    return all_sum(sums.values(), env)


def score(run: Run, parts: Parts, model: nn.Module) -> dict:
    return evaluate(model, parts.val_loader, run.device, run.env, run.amp, run.channels_last)


def run_epoch(run: Run, parts: Parts, state: TrainState, epoch: int) -> None:
    """One epoch: train, evaluate, then checkpoint and log it."""
    recipe = run.settings.recipe
    lr = set_epoch_lr(parts.scheduler, recipe, epoch)
    loss_total, steps, samples = train_epoch(run, parts, state, epoch, lr)
    state.train_samples += int(samples)
    if run.env.world > 1:  # every rank evaluates (and ends) with the same BatchNorm statistics
        distribute_bn(parts.model, run.env.world, reduce=recipe.dist_bn == "reduce")
    metrics = score(run, parts, parts.model)
    entry = {"train_lr": lr, "train_loss": loss_total / max(steps, 1), "test_loss": metrics["loss"],
             "test_acc1": metrics["acc1"], "test_acc5": metrics["acc5"], "epoch": epoch,
             "n_parameters": parts.n_parameters}
    state.history.append(entry)
    if state.best is None or metrics["acc1"] > state.best["acc1"]:
        state.best = {"acc1": metrics["acc1"], "acc5": metrics["acc5"], "epoch": epoch}
    state.epoch, state.step, state.partial = epoch + 1, 0, [0.0, 0, 0]
    save_state(run, parts, state)
    if run.env.main:
        write_log(run.paths.log, state.history)
        if run.progress:
            tqdm.write(f"epoch {epoch + 1}/{recipe.epochs}: loss {entry['train_loss']:.4f}, "
                       f"top-1 {metrics['acc1']:.2f}, top-5 {metrics['acc5']:.2f}, lr {lr:.2e}")


def final_scores(run: Run, parts: Parts) -> Scores:
    """The trained model's scores and its inference form's, which must be exactly the same."""
    t0 = time.perf_counter()
    final = score(run, parts, parts.model)
    eval_seconds = time.perf_counter() - t0
    fused = inference_form(parts.model)
    return Scores(final, score(run, parts, fused), fused, eval_seconds)


def final_record(run: Run, parts: Parts, state: TrainState, scores: Scores, extra: dict | None) -> dict:
    config, s = run.config, run.settings
    kept = ("acc1", "acc5", "loss")
    return {
        "status": "complete", "run_id": config.run_id, "model": config.model, "recipe": s.recipe.name,
        "profile": s.profile.name, "data": s.data, "data_description": parts.splits.description,
        "distillation": config.distillation,
        "epochs": s.recipe.epochs, "img_size": s.img_size, "batch_size": s.batch_size,
        "lr": s.lr, "num_classes": parts.splits.num_classes,
        "best": state.best, "final": {k: scores.final[k] for k in kept},
        "fused": {k: scores.fused[k] for k in kept},
        "params": parts.n_parameters, "fused_params": count_params(scores.fused_model),
        "macs": count_macs(scores.fused_model.cpu(), (1, 3, s.img_size, s.img_size)),
        "train_images_per_second": state.train_samples / max(state.train_time, 1e-9),
        "eval_images_per_second": scores.final["n"] / max(scores.eval_seconds, 1e-9),
        "train_time_s": state.train_time, "source": "trained", "environment": environment(run.device, run.env),
        **(extra or {}),
    }


@holds_run_lock(lambda: launch_env().main, lambda config: check_launch(config.resolve()))
def train(
        config: RunConfig,
        output: str | Path,
        progress: bool = True,
        should_stop: Callable[[], bool] | None = None,
        checkpoint_interval: float = 900.0,
        extra: dict | None = None,
        sync_steps: int = 20,
) -> dict:
    """Run (or resume, or return the finished record of) one training run; returns its record.

    ``should_stop`` is polled after every step: when it returns True the run checkpoints mid-epoch and
    raises ``Interrupted`` (``StopRequests`` wires SIGTERM/SIGUSR2 and a stop file to it). Under DDP the
    ranks agree every ``sync_steps`` steps (and at each epoch's end) on stopping, on the periodic save and
    on a non-finite loss: all of them stop at the same step.
    ``extra`` is merged into the record (what a table measures beside the training, e.g. its complexity).
    The run holds its folder's lock (``repnext.lock``) throughout; ``wait_for_lock=True`` waits for a holder.
    """
    paths, settings = RunPaths(Path(output).expanduser()), config.resolve()
    launched, device = check_launch(settings)
    finished = open_run_folder(paths, config)
    if finished is not None:
        return finished
    run = Run(config, settings, paths, init_distributed(device, launched), device, progress, should_stop,
              checkpoint_interval, sync_steps)
    parts = build_parts(run)
    state = resume_state(run, parts)
    run.last_save = time.monotonic()
    try:
        for epoch in range(state.epoch, settings.recipe.epochs):
            run_epoch(run, parts, state, epoch)
        scores = final_scores(run, parts)
    except RuntimeError as e:  # a collective failed: a peer is gone. Say so, and end this rank too
        if isinstance(e, TrainingError) or run.env.world == 1 or not lost_peer(e):
            raise
        raise failure(run, lost_peer_message(e, run.env), epoch=state.epoch) from None
    record = final_record(run, parts, state, scores, extra)
    if run.env.main:
        write_record(paths.record, record)
    return record

# --- command line ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    try:
        args, config = parse_train_arguments(argv)
        check_device(config.device)
        check_model(config.model)
        with StopRequests() as should_stop:
            record = train(config, args.output, progress=not args.no_progress, should_stop=should_stop)
    except Interrupted as e:
        signum = should_stop.received[0]
        print(f"interrupted by {signal.Signals(signum).name}: {e}", file=sys.stderr)
        return 128 + signum
    except (TrainingError, RepnextError) as e:
        if launch_env().main or not getattr(e, "every_rank", False):
            print(f"error: {e}", file=sys.stderr)
        else:  # every rank found it: rank 0 says it once, before torchrun or srun ends the others
            time.sleep(5)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    best, fused = record["best"], record["fused"]
    print(f"{config.model}: best top-1 {best['acc1']:.2f} (epoch {best['epoch']}), final fused top-1 "
          f"{fused['acc1']:.2f}, {record['train_images_per_second']:.1f} img/s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
