"""Speed of RepNeXt's forms against timm references, measured interleaved in one run.

    python -m repnext.bench                                   # repnext_m1 vs repvit_m1_0, every task
    python -m repnext.bench --models repnext_m0 repnext_m1 ... --refs repvit_m0_9 repvit_m1_0 convnext_femto
    python -m repnext.bench --all                             # the whole matrix of the paper's models

Tasks: ``latency`` (batch 1, ms), ``throughput`` (batch 16 by default, img/s) and ``train`` (one step of
forward + cross-entropy + backward + AdamW at the throughput batch, img/s). RepNeXt forms: ``train`` (the
training form; its multi-branch mixers compose their kernels on the fly), ``branchwise`` (the training form
run branch by branch: the reference), ``official``, ``full``, ``single_branch`` (inference forms, see
``repnext.reparam``, computing in place as ``fuse`` does by default) and ``full_noinplace``
(``fuse(inplace=False)``); timm references: ``train`` and ``fused`` (``reparameterize_model``). Each round
runs every (model, form, task) once, in turn, so a drift in machine speed hits all alike; medians over rounds
are reported with ratios, and the figures go to the results store (``<results>/bench/<stamp>/record.json``).
Every case runs in NCHW and in channels_last (``--memory-format``); on CUDA ``--amp bfloat16`` applies, time
is synchronised, and ``--paper-throughput`` adds the papers' GPU throughput of every model (fp32, the largest
power-of-two batch that fits: ``gpu_throughput``).
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m repnext.bench: a bad argument is answered before the imports below
    from repnext.cli import bench_argument_error, bench_parser, reject_bad_arguments

    reject_bad_arguments(bench_parser(), bench_argument_error)

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import timm
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import repnext

from .cli import BENCH_MODELS, BENCH_REFS, BENCH_TASKS, bench_argument_error, bench_parser
from .messages import first_line
from .models import is_repnext
from .preflight import PreflightError, check_device
from .runtime import Dist, cpu_name, environment
from .store import write_json

REPNEXT_FORMS = ("train", "branchwise", "official", "full", "full_noinplace", "single_branch")
REFERENCE_FORMS = ("train", "fused")
TASKS, ALL_REPNEXT, ALL_REFS = BENCH_TASKS, BENCH_MODELS, BENCH_REFS


@dataclass
class Case:
    model: str
    form: str
    task: str
    batch: int
    channels_last: bool
    seconds: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def value(self) -> float:
        """ms per image batch for latency, images/s otherwise."""
        return 1e3 * self.median_s if self.task == "latency" else self.batch / self.median_s

    @property
    def label(self) -> str:
        return f"{self.form}/{'cl' if self.channels_last else 'nchw'}"

    @property
    def unit(self) -> str:
        return "ms" if self.task == "latency" else "img/s"


def build_form(name: str, form: str, device: torch.device, channels_last: bool) -> nn.Module:
    model = timm.create_model(name)
    if form == "branchwise":
        model.set_online_reparam(False)
    elif form in ("official", "full", "full_noinplace", "single_branch"):
        mode = form.removesuffix("_noinplace")
        model = model.eval().fuse(mode, channels_last=channels_last, inplace=mode == form)
    elif form == "fused":
        model = timm.utils.reparameterize_model(model.eval())
    model = model.to(device)
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def forms_of(name: str) -> tuple[str, ...]:
    if is_repnext(name):
        return REPNEXT_FORMS
    model = timm.create_model(name)
    has_reparam = any(hasattr(m, n) for m in model.modules() for n in ("fuse", "reparameterize"))
    return REFERENCE_FORMS if has_reparam else ("train",)


def fused_form(name: str) -> str:
    """The deployed form: RepNeXt's ``full``; timm models: ``fused`` (``reparameterize_model``), or ``train``
    with nothing to fuse."""
    return "full" if is_repnext(name) else forms_of(name)[-1]


def make_step(model: nn.Module, task: str, x: torch.Tensor, amp: str) -> Callable[[], None]:
    autocast = (torch.autocast(x.device.type, dtype=getattr(torch, amp)) if amp != "none"
                else contextlib.nullcontext())
    if task != "train":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast:
                model(x)
        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.arange(x.shape[0], device=x.device) % 1000

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # frees the gradients: many models wait between their turns
    return step


def timed(fn: Callable[[], None], device: torch.device, iters: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def run(models: list[str], tasks: list[str], forms: list[str] | None, batch: int, img_size: int, rounds: int,
        device: torch.device, amp: str, formats: list[bool], iters: int, progress: bool = True) -> list[Case]:
    runners: list[tuple[Case, Callable[[], None]]] = []
    for name, channels_last in ((n, f) for n in models for f in formats):
        for form in forms_of(name):
            if forms and form not in forms:
                continue
            for task in tasks:
                if task != "train" and form in ("branchwise",):
                    continue  # inference of the training form is the 'train' form's
                if task == "train" and form not in ("train", "branchwise"):
                    continue  # fused forms are for inference
                b = 1 if task == "latency" else batch
                x = torch.randn(b, 3, img_size, img_size, device=device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                model = build_form(name, form, device, channels_last)
                step = make_step(model, task, x, amp)
                step()  # warm-up: allocator, oneDNN/cuDNN primitive caches
                runners.append((Case(name, form, task, b, channels_last), step))
    for _ in tqdm(range(rounds), desc="rounds", unit="round", disable=not progress, file=sys.stderr):
        for case, step in runners:
            case.seconds.append(timed(step, device, iters if case.task != "train" else 1))
    return [case for case, _ in runners]


def throughput(name: str, batch: int = 16, img_size: int = 224, rounds: int = 3, form: str | None = None,
               channels_last: bool = True, device: str = "cpu") -> dict:
    """Images/s of one model's inference form (RepNeXt: ``full``; others: timm's fused form) at ``batch``:
    the throughput column of a table, measured on whatever runs the job and labelled with it."""
    form = form or fused_form(name)
    dev = torch.device(device)
    case = run([name], ["throughput"], [form], batch, img_size, rounds, dev, "none", [channels_last], iters=1,
               progress=False)[0]
    label = "as built (nothing to fuse)" if form == "train" else form
    return {"images_per_second": case.value, "form": label, "batch": batch, "img_size": img_size,
            "channels_last": channels_last, "rounds": rounds, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_name()} (CPU)"}


def largest_batch(fits: Callable[[int], bool], cap: int, start: int = 1) -> int | None:
    """The largest power of two in [start, cap] for which ``fits`` holds, doubling up from ``start``
    (``fits`` is assumed monotone: a batch that does not fit means no larger one does); None: not even start."""
    if not fits(start):
        return None
    batch = start
    while batch * 2 <= cap and fits(batch * 2):
        batch *= 2
    return batch


def gpu_throughput(name: str, img_size: int = 224, warmup_s: float = 5.0, time_s: float = 10.0,
                   max_batch: int = 16384, device: str = "cuda") -> dict:
    """The papers' GPU throughput of the fused model (RepNeXt's ``speed_gpu.py``; RepViT: "the maximum
    power-of-two batch size that fits in memory"): float32, NCHW, no autocast, the largest power-of-two batch
    that fits, ``warmup_s`` of warm-up, then calls timed with a synchronisation after each until ``time_s``
    seconds are summed; images/s = batch / mean time."""
    dev = torch.device(device)
    form = "official" if is_repnext(name) else fused_form(name)  # speed_gpu.py: replace_batchnorm
    model = build_form(name, form, dev, channels_last=False).eval()
    refused: list[str] = []  # why the first batch too large did not run

    def fits(batch: int) -> bool:
        try:
            with torch.inference_mode():
                model(torch.zeros(batch, 3, img_size, img_size, device=dev))
            torch.cuda.synchronize(dev)
            return True
        except RuntimeError as e:  # OutOfMemoryError, or a kernel refusing a tensor of 2**31 or more elements
            refused.append(f"batch {batch}: {first_line(e)}")
            return False
        finally:
            torch.cuda.empty_cache()

    batch = largest_batch(fits, max_batch)
    if batch is None:
        raise RuntimeError(f"{name}: not even batch 1 runs on {torch.cuda.get_device_name(dev)} ({refused[0]})")
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    timing: list[float] = []
    with torch.inference_mode():
        torch.cuda.synchronize(dev)
        start = time.perf_counter()
        while time.perf_counter() - start < warmup_s:
            model(x)
        torch.cuda.synchronize(dev)
        while sum(timing) < time_s:
            start = time.perf_counter()
            model(x)
            torch.cuda.synchronize(dev)
            timing.append(time.perf_counter() - start)
    return {"images_per_second": batch / statistics.fmean(timing), "batch": batch, "max_batch": max_batch,
            "larger_batch": refused[0] if refused else f"not tried (max_batch {max_batch})",
            "form": form, "img_size": img_size, "dtype": "float32", "channels_last": False, "autocast": None,
            "warmup_s": warmup_s, "time_s": time_s, "iterations": len(timing),
            "device": torch.cuda.get_device_name(dev), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "threads": torch.get_num_threads()}


def speedup(case: Case, ref: Case) -> float:
    """How many times faster ``case`` runs than ``ref``: the median over rounds of the two timings' ratio in the
    same round. Pairing the rounds cancels the drift of a shared machine that medians taken apart keep."""
    return statistics.median(r / c for r, c in zip(ref.seconds, case.seconds, strict=True))


def render(cases: list[Case]) -> str:
    """A table per task, fastest first, with speedups (``speedup``) over the first reference model's fastest
    form."""
    lines = []
    for task in TASKS:
        rows = [c for c in cases if c.task == task]
        if not rows:
            continue
        better_high = task != "latency"
        rows.sort(key=lambda c: -c.value if better_high else c.value)
        refs = [c for c in rows if not is_repnext(c.model)]
        ref = refs[0] if refs else rows[-1]
        lines.append(f"\n{task} (batch {rows[0].batch}; ratio = speedup over {ref.model} {ref.label}, paired by round)")
        lines.append(f"{'model':<16}{'form':<20}{'median':>10} {'unit':<6}{'min':>9}{'max':>9}{'ratio':>8}")
        for c in rows:
            vals = [1e3 * s if task == "latency" else c.batch / s for s in c.seconds]
            lines.append(f"{c.model:<16}{c.label:<20}{c.value:>10.2f} {c.unit:<6}{min(vals):>9.2f}{max(vals):>9.2f}"
                         f"{speedup(c, ref):>7.2f}x")
    lines += online_reparam_gain(cases)
    return "\n".join(lines) + "\n"


def online_reparam_gain(cases: list[Case]) -> list[str]:
    """Per model, its training step with online reparameterization against the branch-by-branch reference in
    each memory format (upstream trains branch by branch in NCHW)."""
    lines = []
    for model in dict.fromkeys(c.model for c in cases):
        steps = [c for c in cases if c.model == model and c.task == "train"]
        fast = [c for c in steps if c.form == "train"]
        reference = [c for c in steps if c.form == "branchwise"]
        if fast and reference:
            best = max(fast, key=lambda c: c.value)
            gains = ", ".join(f"{speedup(best, r):.2f}x {r.label}" for r in reference)
            lines.append(f"{model} training step, {best.label} against the branch-by-branch reference: {gains}")
    return ["", *lines] if lines else []


def check_arguments(args: argparse.Namespace) -> None:
    """Sizes and counts that are positive, a device this machine has (``auto`` and the threads resolved)."""
    message = bench_argument_error(args)
    if message is not None:
        raise PreflightError(message)
    check_device(args.device)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.threads = args.threads or torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
    except PreflightError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    for name in args.models + args.refs:
        if not timm.is_model(name):
            parser.error(f"unknown model {name!r}; see timm.list_models() (repnext registers repnext_m0..m5e)")
    if args.paper_throughput and not args.device.startswith("cuda"):
        parser.error(f"--paper-throughput measures a CUDA GPU; --device is {args.device!r} (use --device cuda)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = list(ALL_REPNEXT + ALL_REFS) if args.all else args.models + args.refs
    formats = {"nchw": [False], "channels_last": [True], "both": [False, True]}[args.memory_format]
    cases = run(models, args.tasks, args.forms, args.batch, args.img_size, args.rounds, device, args.amp, formats,
                args.iters)
    env = environment(device, Dist())
    print(f"{device} ({env['gpu'] or env['cpu']}), torch {env['torch']}, timm {env['timm']}, repnext "
          f"{repnext.__version__}, {args.threads} thread(s), {args.img_size}x{args.img_size}, amp {args.amp}, "
          f"{args.rounds} interleaved rounds; train = online reparameterization, branchwise = the reference")
    print(render(cases), end="")
    paper = {}
    if args.paper_throughput:
        print(f"\nGPU throughput the papers' way ({args.img_size} px, fp32, largest power-of-two batch)")
        for name in models:
            paper[name] = gpu_throughput(name, args.img_size, device=args.device)
            print(f"{name:<16}{paper[name]['form']:<20}{paper[name]['images_per_second']:>10.0f} img/s"
                  f"  batch {paper[name]['batch']}")
    if not args.no_save:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = args.results / "bench" / f"{env['host']}-{device.type}-{stamp}" / "record.json"
        settings = vars(args) | {"results": str(args.results)}
        cases_out = [asdict(c) | {"value": c.value, "unit": c.unit} for c in cases]
        write_json(path, {"status": "complete", "source": "bench", "settings": settings, "environment": env,
                          "cases": cases_out, "paper_throughput": paper})
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
