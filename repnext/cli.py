"""The command lines' parsers and first checks, importable without torch or timm.

``python -m repnext.train`` (``export``, ``bench``) parses and checks its arguments here, before the module's
own imports (3-8 s of torch and timm), so a bad argument is answered at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import DATASETS, MIN_IMG_SIZE, PAPER_NUM_CLASSES, RunConfig
from .errors import RepnextError
from .profiles import PROFILES
from .recipes import RECIPES
from .store import DEFAULT_RESULTS

EXPORT_FORMATS = ("coreml", "onnx")
BENCH_TASKS = ("latency", "throughput", "train")
BENCH_MODELS = tuple(f"repnext_m{i}" for i in range(6))
BENCH_REFS = ("repvit_m0_9", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5", "convnext_femto")


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
    except RepnextError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m repnext.export", description="Deployment exports of the "
                                     "fused (inference) form: Core ML .mlpackage and ONNX, one JSON record each.")
    parser.add_argument("--model", nargs="+", action="extend", required=True, help="timm model name(s)")
    parser.add_argument("--format", choices=(*EXPORT_FORMATS, "both"), default="both")
    parser.add_argument("--output", type=Path, required=True, help="folder for the artifacts and JSON records")
    parser.add_argument("--checkpoint", type=Path, help="weights for the (single) model")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def export_argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the export's arguments (before any model is built), or None."""
    if args.output.exists() and not args.output.is_dir():
        return f"--output {args.output} is a file; give a folder for the artifacts and records"
    if args.img_size < MIN_IMG_SIZE:
        return (f"--img-size {args.img_size} is below {MIN_IMG_SIZE}, the smallest input the models' stride-32 "
                "stem and stages accept")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        return f"checkpoint {args.checkpoint} does not exist"
    if args.checkpoint is not None and len(args.model) > 1:
        return f"--checkpoint fits one model; got {len(args.model)}"
    return None


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m repnext.bench",
                                     description="Speed of RepNeXt's forms against timm references, measured "
                                                 "interleaved in one run.")
    parser.add_argument("--models", nargs="+", default=["repnext_m1"])
    parser.add_argument("--refs", nargs="+", default=["repvit_m1_0"])
    parser.add_argument("--all", action="store_true", help=f"models {BENCH_MODELS} and refs {BENCH_REFS}")
    parser.add_argument("--tasks", nargs="+", choices=BENCH_TASKS, default=list(BENCH_TASKS))
    parser.add_argument("--forms", nargs="+", help="only these forms (default: all of each model)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2, help="inference calls per timing")
    parser.add_argument("--threads", type=int, help="default: torch's")
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--amp", default="none", choices=("none", "bfloat16", "float16"))
    parser.add_argument("--memory-format", choices=("nchw", "channels_last", "both"), default="both")
    parser.add_argument("--paper-throughput", action="store_true",
                        help="CUDA only: also each model's GPU throughput measured the papers' way")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--no-save", action="store_true")
    return parser


def bench_argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the benchmark's sizes, counts or device name, or None."""
    from .preflight import PreflightError, check_device_name

    for flag in ("batch", "img_size", "rounds", "iters", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return f"--{flag.replace('_', '-')} must be a positive integer, got {value}"
    try:
        check_device_name(args.device)
    except PreflightError as e:
        return str(e)
    return None


def reject_bad_arguments(parser: argparse.ArgumentParser, error) -> None:
    """Parse the command line; exit 2 with one line when ``error(args)`` finds something wrong."""
    args = parser.parse_args()
    message = error(args)
    if message is not None:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def import_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repnext.results",
                                description="the results store; import: official training logs -> records")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import DeiT log.txt / timm summary.csv files into the results store")
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("--results", default=str(DEFAULT_RESULTS), help="the results store (default: %(default)s)")
    imp.add_argument("--table", help="default: the published file's table, else imagenet, imagenet_starnet or "
                                     "compact, from the run")
    imp.add_argument("--model", help="a timm model name, when the file name has none")
    imp.add_argument("--data", choices=list(PAPER_NUM_CLASSES), help="default: from the file name, else imagenet")
    imp.add_argument("--distillation", action=argparse.BooleanOptionalAction, default=None)
    imp.add_argument("--epochs", type=int, help="epochs the run ran, cooldown included (the log's length)")
    imp.add_argument("--dry-run", action="store_true", help="print what each file would become; write nothing")
    imp.add_argument("--force", action="store_true", help="replace a record of the same run from another source")
    return p
