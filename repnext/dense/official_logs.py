"""Import the official mmdet / mmseg JSON logs (mmcv's TextLoggerHook) into the dense tables' store.

    python -m repnext.results import repnext_m3_coco.json repnext_m3_ade20k.json [--results results] [--force]

Line 1 holds the resolved config as Python text: the model, the batch (GPUs x samples_per_gpu), lr and weight
decay come from it. Detection reports the evaluation with the highest ``bbox_mAP`` (the first if tied) and the
final ``bbox_mAP``; segmentation the last evaluation's ``mIoU``. Numbers are x100 and rounded half-up from the
logged decimal text, as the RepNeXt README rounds them (0.4055 -> 40.6, where float formatting gives 40.5).
Runs at another batch than the official one (the 4-GPU re-runs, batch 8) are stored but marked not shown.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import timm

import repnext  # noqa: F401  (registers the RepNeXt models with timm)

from ..config import RunConfig
from ..store import DEFAULT_RESULTS, RunPaths, read_json, write_json, write_log, write_record
from .protocol import get_protocol

FORMATS = {"detection": "mmdet-json", "segmentation": "mmseg-json"}
# what a task's evaluation lines must hold: the six README numbers of detection, mmseg's summary
VAL_KEYS = {
    "detection": ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP", "segm_mAP_50", "segm_mAP_75"),
    "segmentation": ("mIoU", "aAcc", "mAcc"),
}
DETECTION_METRICS = {"box_ap": "bbox_mAP", "box_ap50": "bbox_mAP_50", "box_ap75": "bbox_mAP_75",
                     "mask_ap": "segm_mAP", "mask_ap50": "segm_mAP_50", "mask_ap75": "segm_mAP_75"}
SEGMENTATION_METRICS = {"miou": "mIoU", "aacc": "aAcc", "macc": "mAcc"}


class DenseLogError(ValueError):
    """A file that cannot be imported; the message is one line and names the file."""


# --- the config text of line 1 -------------------------------------------------------------------------

_CALLS = {"dict": dict, "range": range}


def _literal(node: ast.AST, names: dict, where: str):
    """A config value: literals, dict(...)/range(...) calls, names assigned above. Nothing is executed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_literal(e, names, where) for e in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, names, where): _literal(v, names, where) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand, names, where)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
        args = [_literal(a, names, where) for a in node.args]
        kwargs = {k.arg: _literal(k.value, names, where) for k in node.keywords if k.arg is not None}
        return _CALLS[node.func.id](*args, **kwargs)
    raise DenseLogError(f"{where}: unsupported expression {ast.unparse(node)[:60]!r} in the config text")


def read_config(text: str, where: str) -> dict:
    """The top-level assignments of an mmcv config dump (``Config.pretty_text``), read without executing it."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise DenseLogError(f"{where}: the config text is not Python ({e.msg}, line {e.lineno})") from None
    names: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            names[stmt.targets[0].id] = _literal(stmt.value, names, where)
    return names


# --- the log -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DenseLog:
    path: Path
    task: str                # "detection" | "segmentation"
    model: str               # the backbone, a timm model name
    gpus: int
    samples_per_gpu: int
    lr: float
    weight_decay: float
    length: int              # epochs (detection) or iterations (segmentation) the run was set to
    seed: int | None
    evaluations: list[dict]  # the "val" lines, numbers as Decimal; segmentation adds the iteration

    @property
    def batch_size(self) -> int:
        return self.gpus * self.samples_per_gpu

    @property
    def format(self) -> str:
        return FORMATS[self.task]


def _lines(path: Path) -> list[dict]:
    entries = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line, parse_float=Decimal)  # keep the logged decimal text: 0.4055 stays 0.4055
        except json.JSONDecodeError as e:
            raise DenseLogError(f"{path} line {n}: not JSON ({e.msg}); expected an mmdet/mmseg JSON log") from None
        if not isinstance(entry, dict):
            raise DenseLogError(f"{path} line {n}: not a JSON object; expected an mmdet/mmseg JSON log")
        entries.append(entry)
    if not entries or not isinstance(entries[0].get("config"), str):
        raise DenseLogError(f"{path}: line 1 has no 'config' text; expected an mmdet/mmseg JSON log "
                            "(mmcv TextLoggerHook, *.log.json)")
    return entries


def _get(cfg: dict, dotted: str, where: str, kind: type | tuple = (int, float)):
    value = cfg
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise DenseLogError(f"{where}: the config has no {dotted} (found {value!r})")
    return value


def _evaluations(entries: list[dict], task: str, path: Path) -> list[dict]:
    evaluations, last_iter = [], 0
    for n, entry in enumerate(entries[1:], 2):
        if entry.get("mode") == "train":
            last_iter = entry.get("iter", last_iter)
        elif entry.get("mode") == "val":
            missing = [k for k in VAL_KEYS[task] if not isinstance(entry.get(k), Decimal | int)]
            if missing:
                raise DenseLogError(f"{path} line {n}: an evaluation without {', '.join(missing)}")
            # mmseg's iteration-based runner logs the validation loader's counters: the run's iteration
            # is the last training line's
            evaluations.append(dict(entry, iter=last_iter) if task == "segmentation" else entry)
    if not evaluations:
        raise DenseLogError(f"{path}: no evaluation (\"mode\": \"val\") lines")
    return evaluations


def parse(path: str | Path) -> DenseLog:
    path = Path(path)
    if not path.is_file():
        raise DenseLogError(f"{path}: no such file")
    entries = _lines(path)
    cfg = read_config(entries[0]["config"], str(path))
    task = "segmentation" if _get(cfg, "model.type", str(path), str) == "EncoderDecoder" else "detection"
    model = _get(cfg, "model.backbone.type", str(path), str)
    if not timm.is_model(model):
        raise DenseLogError(f"{path}: backbone {model!r} is not a timm model; expected repnext_m3..m5")
    gpu_ids = _get(cfg, "gpu_ids", str(path), (range, list, tuple))
    length_key = "runner.max_epochs" if task == "detection" else "runner.max_iters"
    evaluations = _evaluations(entries, task, path)
    log = DenseLog(path, task, model, gpus=len(gpu_ids),
                   samples_per_gpu=int(_get(cfg, "data.samples_per_gpu", str(path))),
                   lr=float(_get(cfg, "optimizer.lr", str(path))),
                   weight_decay=float(_get(cfg, "optimizer.weight_decay", str(path))),
                   length=int(_get(cfg, length_key, str(path))),
                   seed=entries[0].get("seed"), evaluations=evaluations)
    done = evaluations[-1]["epoch" if task == "detection" else "iter"]
    if done != log.length:
        unit = "epoch" if task == "detection" else "iteration"
        raise DenseLogError(f"{path}: the last evaluation is at {unit} {done} of {log.length}; "
                            "expected a finished run")
    return log


# --- the numbers ---------------------------------------------------------------------------------------

def percent(value: Decimal | int) -> float:
    """x100, rounded half-up to one decimal from the logged text: 0.4055 -> 40.6, 0.6345 -> 63.5."""
    return float((Decimal(value) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def metrics(log: DenseLog) -> dict:
    """The record's metrics (repnext.dense's schema), chosen as the README chose them."""
    last = log.evaluations[-1]
    if log.task == "detection":
        best = max(log.evaluations, key=lambda e: e["bbox_mAP"])  # max() keeps the first of equals
        return {**{k: percent(best[v]) for k, v in DETECTION_METRICS.items()},
                "box_ap_final": percent(last["bbox_mAP"]), "best_epoch": int(best["epoch"])}
    best = max(log.evaluations, key=lambda e: e["mIoU"])
    return {**{k: percent(last[v]) for k, v in SEGMENTATION_METRICS.items()},
            "miou_best": percent(best["mIoU"]), "best_iter": int(best["iter"])}


def history(log: DenseLog) -> list[dict]:
    """log.txt: one line per evaluation, percent (unrounded: the decimal text x100)."""
    keys = DETECTION_METRICS if log.task == "detection" else SEGMENTATION_METRICS
    step = "epoch" if log.task == "detection" else "iter"
    return [{step: int(e[step]), **{k: float(Decimal(e[v]) * 100) for k, v in keys.items()}}
            for e in log.evaluations]


# --- the store -----------------------------------------------------------------------------------------

# the paper cell each task's logs reproduce: the RunConfig fields the dense specs' grids set besides the model
# (ablations/specs/detection.toml, segmentation.toml; tests/test_dense_logs.py checks they agree)
CELLS = {"detection": {"data": "coco"}, "segmentation": {"data": "ade20k"}}


def run_config(log: DenseLog) -> RunConfig:
    """The full-profile RunConfig the log's run is: the batch, lr or length join it only where the log differs
    from the official protocol (the 4-GPU re-runs: batch 8), as repnext.logs does for ImageNet."""
    config = RunConfig(log.model, profile="full", **CELLS[log.task])
    protocol = get_protocol(log.task, config)
    changes: dict = {}
    if log.batch_size != protocol.batch_size:
        changes["batch_size"] = log.batch_size
    if not math.isclose(log.lr, protocol.lr, rel_tol=1e-6):
        changes["lr"] = log.lr
    if log.length != (protocol.epochs if log.task == "detection" else protocol.iters):
        changes["epochs"] = log.length
    return dataclasses.replace(config, **changes)


def _check_target(log: DenseLog, paths: RunPaths, existing: dict | None, sha256: str) -> bool:
    """True when ``paths`` already holds this very file's import; raise where writing would lose a run."""
    if existing is not None and existing.get("source") != "imported":
        raise DenseLogError(f"{log.path}: {paths.record} holds a trained run; pass --force to replace it")
    if existing is None and paths.checkpoint.is_file():
        raise DenseLogError(f"{log.path}: {paths.root} holds an unfinished trained run; pass --force to replace it")
    if existing is not None and existing.get("source_sha256") != sha256:
        raise DenseLogError(f"{log.path} and {existing.get('source_file')} are different files of one run "
                            f"({paths.root.name}); pass --force to replace it")
    return existing is not None


def import_dense_log(path: str | Path, results: str | Path = DEFAULT_RESULTS, force: bool = False,
                     dry_run: bool = False) -> tuple[str, dict, bool]:
    """Import one official JSON log; returns (table, record, whether the store changes). Re-importing the same
    bytes changes nothing; only ``force`` replaces a trained run or another file's import; ``dry_run``
    writes nothing."""
    log = parse(Path(path).expanduser().resolve())
    config, table = run_config(log), log.task  # the tables are named after their tasks
    paths = RunPaths(Path(results).expanduser() / table / config.run_id)
    existing = read_json(paths.record)
    sha256 = hashlib.sha256(log.path.read_bytes()).hexdigest()
    if not force and _check_target(log, paths, existing, sha256):
        return table, existing, False
    official = get_protocol(log.task, RunConfig(log.model, profile="full", **CELLS[log.task]))
    record = {
        "status": "complete", "run_id": config.run_id, "model": log.model, "task": log.task,
        "profile": config.profile, "data": official.data, "batch_size": log.batch_size,
        "gpus": log.gpus, "samples_per_gpu": log.samples_per_gpu, "lr": log.lr, "weight_decay": log.weight_decay,
        ("epochs" if log.task == "detection" else "iters"): log.length, "seed": log.seed,
        "metrics": metrics(log),
        # the README shows the 8-GPU runs (batch 16); the 4-GPU re-runs are kept, not shown
        "shown": log.batch_size == official.batch_size,
        # "imported": what the tables and repnext.logs call a record read from an official log
        "source": "imported", "source_file": str(log.path), "source_format": log.format, "source_sha256": sha256,
    }
    if dry_run:
        return table, record, True
    write_json(paths.config, {"run_id": config.run_id, "config": dataclasses.asdict(config),
                              "resolved": {k: record[k] for k in ("batch_size", "lr", "weight_decay", "seed")}})
    write_log(paths.log, history(log))
    write_record(paths.record, record)  # last: a record marks the run done
    return table, record, True


def _summary(table: str, r: dict) -> str:
    m = r["metrics"]
    if r["task"] == "detection":
        numbers = (f"AP^b {m['box_ap']} {m['box_ap50']} {m['box_ap75']}, AP^m {m['mask_ap']} {m['mask_ap50']} "
                   f"{m['mask_ap75']} (epoch {m['best_epoch']}; final AP^b {m['box_ap_final']})")
    else:
        numbers = f"mIoU {m['miou']} (iteration {r['iters']})"
    shown = "" if r["shown"] else f", batch {r['batch_size']}: stored, not shown"
    return f"{table}/{r['run_id']}: {numbers}{shown} <- {Path(r['source_file']).name}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repnext.results", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import official mmdet/mmseg JSON logs into the results store")
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("--results", default=str(DEFAULT_RESULTS), help="the results store (default: %(default)s)")
    imp.add_argument("--force", action="store_true", help="replace a trained run's or another file's record")
    imp.add_argument("--dry-run", action="store_true", help="print what each file would become; write nothing")
    args = p.parse_args(argv)
    failed = 0
    for path in args.paths:
        try:
            if not path.endswith(".json"):
                raise DenseLogError(f"{path}: not a .json log; import DeiT log.txt / summary.csv files in "
                                    "another call")
            table, record, changed = import_dense_log(path, args.results, args.force, args.dry_run)
        except (DenseLogError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        action = ("would import " if args.dry_run else "imported ") if changed else "unchanged "
        print(action + _summary(table, record))
    return 1 if failed else 0
