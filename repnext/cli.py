"""The training command line's parser and first checks, importable without torch or timm.

``python -m repnext.train`` parses and checks its arguments here, before the engine's own imports (3-8 s of
torch and timm), so a bad argument is answered at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import DATASETS, RunConfig
from .errors import RepnextError
from .profiles import PROFILES
from .recipes import RECIPES


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repnext.train",
                                description="The training and evaluation engine: one run of a recipe under a "
                                            "profile, resumable at any point.")
    p.add_argument("--model", required=True, help="a timm model name, e.g. repnext_m0")
    p.add_argument("--recipe", default="repvit", choices=sorted(RECIPES))
    p.add_argument("--profile", default="smoke", choices=sorted(PROFILES),
                   help="; ".join(f"{name}: {prof.description}" for name, prof in PROFILES.items()))
    p.add_argument("--data", choices=DATASETS, help="default: the profile's")
    p.add_argument("--data-root", help="folder of ImageNet (train/, val/) or CIFAR-100 (cifar-100-python/)")
    p.add_argument("--output", required=True, help="the run's folder in the results store")
    p.add_argument("--distillation", action="store_true", help="DeiT hard distillation from the recipe's teacher")
    p.add_argument("--teacher-checkpoint", help="teacher weights (full profile: regnety_160 from DeiT)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="total batch over all processes")
    p.add_argument("--img-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_train_arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, RunConfig]:
    """The parsed arguments and their run config; raises naming a value no run can use."""
    from .preflight import check_device_name

    args = train_parser().parse_args(argv)
    if args.data is not None and args.data == PROFILES[args.profile].data:
        args.data = None  # the profile's own dataset named: the same run as without --data
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    config.resolve()
    check_device_name(config.device)
    return args, config


def reject_bad_train_arguments() -> None:
    """``parse_train_arguments`` of the command line, exiting with its one line (status 1) on a bad value."""
    try:
        parse_train_arguments()
    except (RepnextError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
