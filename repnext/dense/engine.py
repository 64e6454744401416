"""Training and evaluation of the dense models, the engine's way (``repnext.train``): one run = one folder of
the results store (config.json, log.txt with one JSON line per evaluation, checkpoint.pth, record.json).

Iteration-based: iteration ``i`` always sees the same images with the same augmentation (batches and flips
are functions of the seed, the epoch and the position), and the global RNGs that torchvision's samplers use
are re-seeded per iteration, so a run stopped anywhere (SIGTERM/SIGUSR2 or a stop file through
``repnext.train.StopRequests``) resumes to the same result. DDP: each rank takes its slice of every batch,
BatchNorm becomes SyncBatchNorm (every BN trains, as in the official runs), evaluation is sharded.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..complexity import count_params
from ..config import RunConfig
from ..data import DatasetError, sample_seed, seed_everything
from ..runtime import Dist, all_sum, environment, init_distributed, launch_env
from ..store import RunPaths, read_json, save_checkpoint, write_json, write_log, write_record
from ..train import Interrupted, TrainingError, make_run_folder, pick_device, resume
from .ade import IGNORE, AdeSegmentation, confusion_matrix, segmentation_metrics
from .coco import CocoInstances, detection_metrics, grouped_batches, to_coco_results
from .protocol import DenseProtocol, get_protocol

RECIPES = {"detection": "mask_rcnn_1x", "segmentation": "semantic_fpn_80k"}


@dataclasses.dataclass
class DenseData:
    train: Dataset
    val: Dataset
    num_classes: int
    description: str


def build_data(p: DenseProtocol, data_root: str | None) -> DenseData:
    """The task's train and val sets: the synthetic ones for ``digits`` (made on first use), else the real."""
    from . import synthetic

    if p.data in ("coco", "ade20k") and not data_root:
        raise DatasetError(f"dataset {p.data} needs --data-root (COCO: annotations/instances_{{train,val}}2017.json, "
                           "train2017/, val2017/; ADE20K: ADEChallengeData2016/images|annotations/...)")
    if p.task == "detection":
        root = synthetic.make_coco() if p.data == "digits" else data_root
        train, val = CocoInstances(root, "train", train=True), CocoInstances(root, "val", train=False)
        what = "digits on canvases (COCO format)" if p.data == "digits" else "COCO 2017"
        return DenseData(train, val, train.num_classes, f"{what}, {len(train)} train / {len(val)} val images")
    root = synthetic.make_ade() if p.data == "digits" else data_root
    train = AdeSegmentation(root, "training", p.img_scale, p.crop)
    val = AdeSegmentation(root, "validation", p.img_scale)
    what = "digits on canvases (ADE20K format)" if p.data == "digits" else "ADE20K"
    return DenseData(train, val, 150, f"{what}, {len(train)} train / {len(val)} val images")


def build_model(p: DenseProtocol, model_name: str, num_classes: int, weights: str | Path | None) -> nn.Module:
    from .detection import build_mask_rcnn
    from .segmentation import build_semantic_fpn

    if p.task == "detection":
        return build_mask_rcnn(model_name, num_classes, min_size=min(p.img_scale), max_size=max(p.img_scale),
                               backbone_weights=weights, **p.model_kwargs)
    return build_semantic_fpn(model_name, num_classes, backbone_weights=weights, **p.model_kwargs)


class Schedule:
    """Which images iteration ``i`` trains on: detection by aspect-grouped epochs (mmdet's GroupSampler),
    segmentation by shuffled epochs without the last partial batch; both seeded by (seed, epoch)."""

    def __init__(self, p: DenseProtocol, train: Dataset):
        self.p, self.train = p, train
        self.groups = train.aspect_groups() if p.task == "detection" else None
        self.per_epoch = len(self._epoch(0))
        if self.per_epoch == 0:
            raise TrainingError(f"{len(train)} training images cannot fill a batch of {p.batch_size}")
        self.total = p.iters or p.epochs * self.per_epoch
        self._cache: tuple[int, list] | None = None

    def _epoch(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng(sample_seed(self.p.seed, epoch)).permutation(len(self.train))
        if self.groups is not None:
            return grouped_batches(self.groups, self.p.batch_size, order)
        b = self.p.batch_size
        return [order[k:k + b].tolist() for k in range(0, len(order) - b + 1, b)]

    def batch(self, it: int) -> list[int]:
        epoch, position = divmod(it, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._epoch(epoch))
        return self._cache[1][position]

    def lr(self, it: int) -> float:
        p = self.p
        if p.task == "detection":
            lr = p.lr * 0.1 ** sum(it // self.per_epoch >= s for s in p.lr_steps)
        else:
            lr = (p.lr - p.min_lr) * (1 - it / self.total) ** p.poly_power + p.min_lr
        if it < p.warmup_iters:  # mmcv's linear warmup
            lr *= 1 - (1 - it / p.warmup_iters) * (1 - p.warmup_ratio)
        return lr

    def evaluates_after(self, it: int) -> bool:
        """Whether an evaluation follows iteration ``it`` (0-based): each epoch's end, or every interval."""
        done = it + 1
        if self.p.task == "detection":
            return done % self.per_epoch == 0
        return done % self.p.eval_interval == 0 or done == self.total


class Batches(Dataset):
    """Iteration -> this rank's samples (what a DataLoader's workers prefetch)."""

    def __init__(self, schedule: Schedule, env: Dist):
        self.schedule, self.env = schedule, env

    def __len__(self) -> int:
        return self.schedule.total

    def __getitem__(self, it: int) -> list:
        indices = self.schedule.batch(it)
        share = len(indices) // self.env.world
        mine = indices[self.env.rank * share:(self.env.rank + 1) * share]
        seeds = [sample_seed(self.schedule.p.seed, it, self.env.rank * share + j) for j in range(len(mine))]
        if self.schedule.p.task == "detection":
            return [self.schedule.train[(i, bool(s % 2))] for i, s in zip(mine, seeds)]
        return [self.schedule.train[(i, s)] for i, s in zip(mine, seeds)]


def _loader(source: Dataset, start: int, workers: int) -> DataLoader:
    return DataLoader(source, batch_size=None, sampler=range(start, len(source)), num_workers=workers,
                      collate_fn=lambda x: x, persistent_workers=False)


def _loss(model: nn.Module, task: str, samples: list, device: torch.device) -> torch.Tensor:
    if task == "detection":
        images = [x.to(device) for x, _ in samples]
        targets = [{k: v.to(device) for k, v in t.items() if k != "image_id"} for _, t in samples]
        return sum(model(images, targets).values())
    x = torch.stack([x for x, _ in samples]).to(device)
    y = torch.stack([y for _, y in samples]).to(device)
    logits = F.interpolate(model(x), size=y.shape[1:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, y, ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: nn.Module, task: str, val: Dataset, device: torch.device, env: Dist,
             batch: int = 2) -> dict[str, float]:
    """COCO box/mask APs or mIoU (percent) of ``model`` on ``val``; every rank scores its shard."""
    model.eval()
    mine = list(range(env.rank, len(val), env.world))
    if task == "segmentation":
        confusion = torch.zeros(model.num_classes, model.num_classes, dtype=torch.int64)
        for i in mine:
            x, y = val[i]
            confusion += confusion_matrix(model.predict(x[None].to(device), y.shape).cpu()[0], y, model.num_classes)
        if env.world > 1:
            confusion = confusion.to(device)
            dist.all_reduce(confusion)
        return segmentation_metrics(confusion.cpu())
    boxes, segms = [], []
    for k in range(0, len(mine), batch):
        samples = [val[i] for i in mine[k:k + batch]]
        outputs = model([x.to(device) for x, _ in samples])
        outputs = [{k2: v.cpu() for k2, v in o.items()} for o in outputs]
        b, s = to_coco_results(outputs, [t["image_id"] for _, t in samples], val.cat_ids)
        boxes, segms = boxes + b, segms + s
    if env.world > 1:
        gathered = [None] * env.world
        dist.all_gather_object(gathered, (boxes, segms))
        boxes, segms = [r for g in gathered for r in g[0]], [r for g in gathered for r in g[1]]
    return detection_metrics(val.coco, boxes, segms)


def summarise(task: str, history: list[dict]) -> dict:
    """The record's ``metrics`` (schema: ``repnext.dense``) from the evaluations in ``history``."""
    last = history[-1]
    if task == "detection":
        best = max(history, key=lambda h: h["box_ap"])  # max keeps the first of equal values
        keys = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75")
        return {**{k: best[k] for k in keys}, "box_ap_final": last["box_ap"], "best_epoch": best["epoch"]}
    best = max(history, key=lambda h: h["miou"])
    return {"miou": last["miou"], "miou_best": best["miou"], "best_iter": best["iter"], "aacc": last["aacc"],
            "macc": last["macc"]}


def _prepare(paths: RunPaths, config: RunConfig) -> dict | None:
    """The folder ready for ``config``; its complete record if the run is done."""
    make_run_folder(paths.root)
    stored = read_json(paths.config)
    if stored is not None and stored["config"] != dataclasses.asdict(config):
        raise TrainingError(f"{paths.root} holds another run ({stored.get('run_id')}, not {config.run_id}); "
                            "choose another output folder")
    record = read_json(paths.record)
    return record if record is not None and record.get("status") == "complete" else None


def train_dense(task: str, config: RunConfig, output: str | Path, backbone_weights: str | Path | None = None,
                progress: bool = True, should_stop: Callable[[], bool] | None = None,
                checkpoint_interval: float = 900.0, extra: dict | None = None) -> dict:
    """Run (or resume, or return the finished record of) one run of ``task``; returns its record."""
    paths = RunPaths(Path(output).expanduser())
    p = get_protocol(task, config)
    done = _prepare(paths, config)
    if done is not None:
        return done
    launched = launch_env()
    device = pick_device(config.device, launched)
    env = init_distributed(device, launched)
    try:
        data = build_data(p, config.data_root)
    except DatasetError as e:
        raise TrainingError(str(e)) from None
    if p.batch_size % env.world:
        raise TrainingError(f"batch {p.batch_size} does not split over {env.world} ranks")
    if env.main:
        write_json(paths.config, {"run_id": config.run_id, "config": dataclasses.asdict(config),
                                  "resolved": {"task": task, **dataclasses.asdict(p)}})
    seed_everything(sample_seed(p.seed, env.rank))
    model = build_model(p, config.model, data.num_classes, backbone_weights)
    if env.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
           if env.world > 1 else model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    schedule = Schedule(p, data.train)
    state = {"iter": 0, "history": [], "untrained": None, "partial": [0.0, 0], "train_time": 0.0}
    if paths.checkpoint.is_file():
        resume(paths.checkpoint, state, model=model, optimizer=optimizer)
    if p.evaluate_untrained and state["untrained"] is None:
        state["untrained"] = evaluate(model, task, data.val, device, env)

    def checkpoint() -> None:
        if env.main:
            save_checkpoint(paths.checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                               **state, "run_id": config.run_id})

    _loop(task, p, schedule, ddp, model, optimizer, data, state, env, device, paths, should_stop,
          checkpoint, checkpoint_interval, progress, config.workers or 0)
    record = {
        "status": "complete", "run_id": config.run_id, "model": config.model, "task": task,
        "recipe": RECIPES[task], "profile": config.profile, "data": config.data or p.data,
        "data_description": data.description, "img_size": min(p.img_scale),
        "epochs": p.epochs or math.ceil(p.iters * p.batch_size / len(data.train)), "iters": schedule.total,
        "batch_size": p.batch_size, "lr": p.lr, "weight_decay": p.weight_decay, "num_classes": data.num_classes,
        "metrics": summarise(task, state["history"]), "untrained": state["untrained"], "history": state["history"],
        "params": count_params(model), "backbone_weights": str(backbone_weights) if backbone_weights else None,
        "train_time_s": state["train_time"], "source": "trained", "environment": environment(device, env),
        **(extra or {}),
    }
    if env.main:
        write_record(paths.record, record)
    return record


def _loop(task, p, schedule, ddp, model, optimizer, data, state, env, device, paths, should_stop, checkpoint,
          checkpoint_interval, progress, workers) -> None:
    """Iterations ``state['iter']`` to the end, evaluating and checkpointing on the way."""
    last_save, t0 = time.monotonic(), time.perf_counter()
    bar = tqdm(total=schedule.total, initial=state["iter"], desc=f"{task} {p.data}", unit="it", leave=False,
               disable=not (progress and env.main))
    for it, samples in enumerate(_loader(Batches(schedule, env), state["iter"], workers), start=state["iter"]):
        lr = schedule.lr(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ddp.train()
        seed_everything(sample_seed(p.seed, it, env.rank, 1))  # torchvision's RoI/anchor samplers draw from it
        loss = _loss(ddp, task, samples, device)
        if not math.isfinite(loss.item()):
            error = f"loss is {loss.item()} at iteration {it} (lr {lr:.3g}); the run diverged"
            if env.main:
                write_record(paths.record, {"status": "failed", "run_id": paths.root.name, "error": error})
            raise TrainingError(error)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["partial"] = [state["partial"][0] + loss.item(), state["partial"][1] + 1]
        state["iter"] = it + 1
        bar.update()
        bar.set_postfix(loss=f"{state['partial'][0] / state['partial'][1]:.3f}", lr=f"{lr:.2e}")
        if schedule.evaluates_after(it):
            state["train_time"] += time.perf_counter() - t0
            loss_sum, steps = all_sum(state["partial"], env)
            metrics = evaluate(model, task, data.val, device, env)
            entry = {"mode": "val", "epoch": it // schedule.per_epoch + 1, "iter": it + 1, "lr": lr,
                     "train_loss": loss_sum / max(steps, 1), **metrics}
            state["history"].append(entry)
            state["partial"] = [0.0, 0]
            if env.main:
                write_log(paths.log, state["history"])
                tqdm.write(f"{task} iter {it + 1}/{schedule.total}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in metrics.items()))
            checkpoint()
            last_save, t0 = time.monotonic(), time.perf_counter()
            continue
        stop = should_stop is not None and should_stop()
        if env.world > 1:  # every rank stops at the same iteration, or the others hang in the next all-reduce
            stop = all_sum([float(stop)], env)[0] > 0
        if stop or time.monotonic() - last_save > checkpoint_interval:
            state["train_time"] += time.perf_counter() - t0
            checkpoint()
            last_save, t0 = time.monotonic(), time.perf_counter()
            if stop:
                raise Interrupted(f"checkpointed at iteration {it + 1}; run again to resume")
    bar.close()
