"""Official training logs read as runs: which run each file is, its history and the record it makes.

    python -m repnext.results import $(find logs -name '*.txt' -o -name '*_summary.csv')

(the command is ``repnext.results``'s: it writes the records).

Two formats: the DeiT/RepNeXt ``log.txt`` (one JSON object per epoch, official main.py) and timm's
``summary.csv`` of moganet_train.py (StarNet recipe) with the ``args.yaml`` beside it. Each run lands in
``<results>/<table>/<run id>/`` under the run id of the paper-scale RunConfig it reproduces, so the table
that asks for that cell finds it done. The published files (``official_logs.csv``) are known by name; any
other file's run is inferred from its name, its args.yaml, its parameter count and its lr schedule.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import yaml

from .complexity import measure
from .config import PAPER_NUM_CLASSES, RunConfig, Settings
from .counts import Complexity
from .errors import RepnextError
from .messages import first_line
from .recipes import get_recipe
from .reference import table_fuse_mode

MANIFEST = Path(__file__).with_name("official_logs.csv")
SUMMARY_COLUMNS = {"lr": "train_lr", "train_loss": "train_loss", "eval_loss": "test_loss",
                   "eval_top1": "test_acc1", "eval_top5": "test_acc5", "epoch": "epoch"}  # DeiT order


class LogImportError(RepnextError):
    """A file that cannot be imported; the message is one line and names the file."""


@dataclass(frozen=True)
class ParsedLog:
    path: Path
    format: str          # "deit-log" | "starnet-summary"
    history: list[dict]  # DeiT schema, one entry per epoch, epochs 0..n-1
    args: dict           # the run's args.yaml ({} for DeiT logs: main.py writes none)
    sha256: str = ""     # of the file's bytes: a copy of a file is the same run's log

    @property
    def n_parameters(self) -> int | None:
        return self.history[-1].get("n_parameters")


def _number(value: object, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise LogImportError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise LogImportError(f"{where}: {value!r} is not finite")
    return x


def _maybe_number(value: str) -> float | str:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _epochs_in_order(entries: list[dict], path: Path) -> list[dict]:
    # resumed official runs append to the same log: the last line of an epoch wins
    by_epoch = {int(e["epoch"]): e for e in entries}
    if not by_epoch:
        raise LogImportError(f"{path}: no epochs in the file")
    missing = sorted(set(range(max(by_epoch) + 1)) - set(by_epoch))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise LogImportError(f"{path}: epochs missing from the log ({shown})")
    return [by_epoch[e] for e in sorted(by_epoch)]


def parse_deit_log(path: Path) -> ParsedLog:
    entries = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise LogImportError(f"{path} line {n}: not JSON ({e.msg}); expected a DeiT log.txt") from None
        if not isinstance(entry, dict) or not {"epoch", "test_acc1", "test_acc5"} <= entry.keys():
            raise LogImportError(f"{path} line {n}: no epoch/test_acc1/test_acc5; expected a DeiT log.txt")
        for key in ("epoch", "test_acc1", "test_acc5"):
            _number(entry[key], f"{path} line {n} {key}")
        entries.append(entry)
    return ParsedLog(path, "deit-log", _epochs_in_order(entries, path), {})


def args_yaml_for(path: Path) -> Path:
    """``X_summary.csv`` -> ``X_args.yaml`` (official release); ``summary.csv`` -> ``args.yaml`` (timm's output)."""
    prefix = path.name[: -len("summary.csv")]
    return path.with_name(f"{prefix}args.yaml")


def parse_starnet_summary(path: Path) -> ParsedLog:
    try:
        with path.open(newline="", errors="replace") as f:
            rows = list(csv.DictReader(f))
    except csv.Error as e:
        raise LogImportError(f"{path}: not a CSV file ({e})") from None
    if not rows or not {"epoch", "eval_top1", "eval_top5"} <= rows[0].keys():
        raise LogImportError(f"{path}: no epoch/eval_top1/eval_top5 columns; expected timm's summary.csv")
    history = []
    for n, row in enumerate(rows, 2):
        entry = {new: _number(row[old], f"{path} line {n} {old}") for old, new in SUMMARY_COLUMNS.items()
                 if old in row}
        entry["epoch"] = int(entry["epoch"])
        entry.update({k: _maybe_number(v) for k, v in row.items() if k not in SUMMARY_COLUMNS and k is not None})
        history.append(entry)
    args_path, args = args_yaml_for(path), {}
    if args_path.is_file():
        try:
            args = yaml.safe_load(args_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise LogImportError(f"{args_path}: not YAML ({first_line(e)})") from None
        if not isinstance(args, dict):
            raise LogImportError(f"{args_path}: not a mapping of training arguments")
    return ParsedLog(path, "starnet-summary", _epochs_in_order(history, path), args)


def parse(path: Path) -> ParsedLog:
    if not path.is_file():
        raise LogImportError(f"{path}: no such file")
    log = parse_starnet_summary(path) if path.name.endswith("summary.csv") else parse_deit_log(path)
    return dataclasses.replace(log, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


# --- what run the log is -------------------------------------------------------------------------------

def _model_from_name(stem: str) -> str | None:
    stem = re.sub(r"^(repnext_m\d)_e(?=_|$)", r"\1e", stem)  # the official E-form names: repnext_m0_e_cifar
    parts = stem.split("_")  # the longest prefix timm knows: repnext_m0e before repnext_m0
    return next(("_".join(parts[:i]) for i in range(len(parts), 0, -1) if timm.is_model("_".join(parts[:i]))), None)


@functools.cache
def _measure(model: str, num_classes: int, img_size: int, fuse_mode: str) -> Complexity:
    return measure(model, num_classes, img_size, fuse_mode)  # cached: building and tracing takes seconds


def _infer_data(log: ParsedLog, model: str, stem: str) -> str:
    if "cifar" in stem:
        return "cifar100"
    if "imagenet" in stem or "in1k" in stem:
        return "imagenet"
    args = log.args
    if "cifar" in f"{args.get('data_dir', '')} {args.get('dataset', '')}".lower() or args.get("num_classes") == 100:
        return "cifar100"
    if args:
        return "imagenet"
    # a DeiT log says nothing but its parameter count, which depends on the head's classes
    return next((d for d, k in PAPER_NUM_CLASSES.items()
                 if log.n_parameters == _measure(model, k, 224, "official").train_params), "imagenet")


def _infer_distillation(log: ParsedLog, stem: str, data: str) -> bool | None:
    if re.search(r"(without|wo|no|non)_?distill", stem):
        return False
    if "distill" in stem:
        return True
    if log.args:  # moganet_train's non-distilled runs predate its distillation options
        return log.args.get("distillation_type") not in (None, "none")
    return False if data == "cifar100" else None  # the official CIFAR runs: --distillation-type none


def _infer_epochs(log: ParsedLog, stem: str, cooldown: int) -> int:
    """Epochs the loop ran, cooldown included (RunConfig.epochs): 300 for 300e, 310 for StarNet's ep300."""
    if log.args.get("epochs") is not None:
        where = args_yaml_for(log.path)
        return int(_number(log.args["epochs"], f"{where} epochs")
                   + _number(log.args.get("cooldown_epochs") or 0, f"{where} cooldown_epochs"))
    if m := re.search(r"(?:^|_)(\d+)e(?:_|$)", stem):
        return int(m.group(1))
    if m := re.search(r"(?:^|_)ep(\d+)(?:_|$)", stem):
        return int(m.group(1)) + cooldown
    return len(log.history)


def _observed_batch_lr(log: ParsedLog, stem: str, settings: Settings) -> tuple[int | None, float | None]:
    """The total batch and peak lr the log shows, where it shows them."""
    recipe = settings.recipe
    if log.format == "starnet-summary":
        m = re.search(r"(\d+)xbs(\d+)", stem)  # moganet_train's experiment name: GPUs x per-GPU batch
        batch = int(m.group(1)) * int(m.group(2)) if m else None
        lr = log.args.get("lr")
        return batch, _number(lr, f"{args_yaml_for(log.path)} lr") if lr is not None else None
    e = recipe.lr_epoch_lag + 1  # one epoch into warmup: lr = warmup_lr + (peak - warmup_lr) / warmup_epochs
    if recipe.warmup_epochs < 2 or len(log.history) <= e or "train_lr" not in log.history[e]:
        return None, None
    peak = recipe.warmup_lr + (log.history[e]["train_lr"] - recipe.warmup_lr) * recipe.warmup_epochs
    if recipe.lr_ref_batch:  # main.py scales lr with the batch: read the rule backwards
        batch = peak / recipe.base_lr * recipe.lr_ref_batch
        if abs(batch - round(batch)) < 1e-3 * batch:
            return round(batch), None
    return None, float(f"{peak:.4g}")


@dataclass(frozen=True)
class OfficialFile:
    """A published log (a row of official_logs.csv): the run it is and the table whose cell that run is."""
    file: str  # its path under the official logs/ folder
    config: RunConfig
    table: str


@functools.cache
def official_files() -> dict[str, OfficialFile]:
    """The published logs by file name."""
    lines = [line for line in MANIFEST.read_text().splitlines() if line and not line.startswith("#")]
    files = {}
    for row in csv.DictReader(lines):
        config = RunConfig(row["model"], row["recipe"], "full", row["data"], row["distillation"] == "true",
                           int(row["epochs"]))
        if int(row["batch"]) != config.resolve().batch_size:
            config = dataclasses.replace(config, batch_size=int(row["batch"]))
        files[Path(row["file"]).name] = OfficialFile(row["file"], config, row["table"])
    return files


def _check_length(log: ParsedLog, epochs: int) -> None:
    if len(log.history) != epochs:
        n = len(log.history)
        raise LogImportError(f"{log.path}: the log has {n} epochs, the run {epochs}; "
                             f"pass --epochs {n} to import it as a {n}-epoch run")


def _official_config(log: ParsedLog, official: OfficialFile) -> RunConfig:
    """The published file's run, after checking that the log shows its length, batch and lr."""
    config, settings = official.config, official.config.resolve()
    if log.args.get("model") not in (None, config.model):
        raise LogImportError(f"{log.path}: the published file is {config.model}'s, its args.yaml says "
                             f"{log.args['model']}; pass --model")
    _check_length(log, config.epochs)
    batch, lr = _observed_batch_lr(log, log.path.stem.lower(), settings)
    wrong_lr = lr is not None and not math.isclose(lr, settings.lr, rel_tol=1e-3)
    if (batch is not None and batch != settings.batch_size) or wrong_lr:
        shown = f"batch {batch}" if batch is not None else f"peak lr {lr:g}"
        raise LogImportError(f"{log.path}: the log shows {shown}, the published {official.file} batch "
                             f"{settings.batch_size} (lr {settings.lr:g}); pass --model, --data, --distillation "
                             "and --epochs to import it as another run")
    return config


def infer_config(log: ParsedLog, model: str | None = None, data: str | None = None,
                 distillation: bool | None = None, epochs: int | None = None) -> RunConfig:
    path, stem = log.path, log.path.stem.lower()
    if model is None:
        named, in_args = _model_from_name(stem), log.args.get("model")
        if named and in_args and named != in_args:
            raise LogImportError(f"{path}: the file name says {named}, args.yaml {in_args}; pass --model")
        model = named or in_args
        if model is None:
            raise LogImportError(f"{path}: cannot infer the model from the file name; pass --model")
    if not timm.is_model(model):
        raise LogImportError(f"{path}: unknown model {model!r}; pass --model with a timm model name")
    data = data or _infer_data(log, model, stem)
    if distillation is None:
        distillation = _infer_distillation(log, stem, data)
        if distillation is None:
            raise LogImportError(f"{path}: cannot infer whether the run distilled; pass --distillation "
                                 "or --no-distillation")
    recipe = "starnet" if log.format == "starnet-summary" else "repvit"
    if epochs is None:
        epochs = _infer_epochs(log, stem, get_recipe(recipe).cooldown_epochs)
    _check_length(log, epochs)
    config = RunConfig(model, recipe, "full", data, distillation, epochs)
    # only what the log shows differs from the recipe's resolution joins the config (and the run id)
    settings, changes = config.resolve(), {}
    batch, lr = _observed_batch_lr(log, stem, settings)
    if batch is not None and batch != settings.batch_size:
        changes["batch_size"] = batch
    for key in ("img_size", "seed"):
        value = log.args.get(key)
        if value is not None and int(_number(value, f"{args_yaml_for(log.path)} {key}")) != getattr(settings, key):
            changes[key] = int(value)
    if changes:
        config = dataclasses.replace(config, **changes)
    if lr is not None and not math.isclose(lr, config.resolve().lr, rel_tol=1e-3):
        config = dataclasses.replace(config, lr=lr)
    return config


def infer_table(config: RunConfig) -> str:
    if config.recipe == "starnet":
        return "imagenet_starnet"
    # the compact-model comparison: CIFAR-100 at 100..400 epochs, ImageNet at other than the paper's 300
    return "compact" if config.data == "cifar100" or config.epochs != get_recipe("repvit").epochs else "imagenet"


def identify(log: ParsedLog, **overrides) -> tuple[RunConfig, str]:
    """The run a log is and its table: a published file's from the manifest (unless flags say otherwise),
    any other's inferred. ``overrides``: model, data, distillation, epochs."""
    official = official_files().get(log.path.name)
    if official is not None and all(v is None for v in overrides.values()):
        return _official_config(log, official), official.table
    config = infer_config(log, **overrides)
    return config, infer_table(config)


# --- the record --------------------------------------------------------------------------------------

def build_record(log: ParsedLog, config: RunConfig, table: str) -> tuple[list[dict], dict]:
    """The run's log.txt history (DeiT schema) and record.json, as if trained here."""
    settings = config.resolve()
    num_classes = PAPER_NUM_CLASSES[settings.data]
    ref_table = f"compact_{settings.data}" if table == "compact" else table
    # what run_cell measures for the table (the paper's counting setting); the full profile trains at it
    measured = _measure(config.model, num_classes, settings.img_size, table_fuse_mode(ref_table))
    params = measured.train_params
    if log.n_parameters is not None and log.n_parameters != params:
        print(f"warning: {log.path}: n_parameters {log.n_parameters} in the log, {params} for {config.model} with "
              f"{num_classes} classes here", file=sys.stderr)
    history = [{**e, "n_parameters": e.get("n_parameters", params)} for e in log.history]
    best = max(history, key=lambda e: e["test_acc1"])  # max() keeps the first of equals, like train()
    last = history[-1]
    record = {
        "status": "complete", "run_id": config.run_id, "model": config.model, "recipe": config.recipe,
        "profile": config.profile, "data": settings.data, "distillation": config.distillation,
        "epochs": settings.recipe.epochs, "img_size": settings.img_size, "batch_size": settings.batch_size,
        "lr": settings.lr, "num_classes": num_classes,
        "best": {"acc1": best["test_acc1"], "acc5": best["test_acc5"], "epoch": best["epoch"]},
        "final": {"acc1": last["test_acc1"], "acc5": last["test_acc5"], "loss": last.get("test_loss")},
        "params": log.n_parameters if log.n_parameters is not None else params,
        "fused_params": measured.fused_params, "macs": measured.macs, "paper_setting": measured.as_dict(),
        "source": "imported", "source_file": str(log.path), "source_format": log.format,
        "source_sha256": log.sha256,
    }
    return history, record
