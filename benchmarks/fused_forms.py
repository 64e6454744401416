"""CPU inference throughput of one RepNeXt model in each of its forms, measured interleaved in one run.

    python benchmarks/fused_forms.py [--model repnext_m1] [--batch 16] [--img-size 224] [--rounds 7]

Forms: the training form, the official fuse (``fuse('official')``), the fully folded form
(``fuse('full')``, also what ``timm.utils.reparameterize_model`` gives) and the single-branch form
(``fuse('single_branch')``). Each round times every form once, in turn, so drift in the machine's speed
(other processes, frequency scaling) hits every form alike; the medians over rounds are reported, with
ratios to the training form. Not a test: speed targets live here, not in pytest.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import timm
import torch
from tqdm import tqdm

import repnext  # noqa: F401  (registers the models)

FORMS = ("train", "official", "full", "single_branch")


def build_forms(name: str) -> dict[str, torch.nn.Module]:
    model = timm.create_model(name).eval()
    return {"train": model, **{mode: model.fuse(mode) for mode in FORMS[1:]}}


@torch.inference_mode()
def time_once(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="repnext_m1")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=2, help="forward passes per timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    forms = build_forms(args.model)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    for model in forms.values():  # warm-up: allocator, oneDNN primitive caches
        time_once(model, x, 1)
    seconds = {form: [] for form in forms}
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
        for form, model in forms.items():
            seconds[form].append(time_once(model, x, args.iters))

    print(f"model {args.model}, batch {args.batch}, {args.img_size}x{args.img_size}, float32, "
          f"{args.rounds} interleaved rounds x {args.iters} passes")
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} thread(s) (OMP_NUM_THREADS={omp}), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    base = None
    print(f"{'form':<15}{'params (M)':>12}{'img/s (median)':>16}{'min':>9}{'max':>9}{'vs train':>10}")
    for form, model in forms.items():
        rates = [args.batch * args.iters / s for s in seconds[form]]
        median = statistics.median(rates)
        base = base or median
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{form:<15}{params:>12.3f}{median:>16.1f}{min(rates):>9.1f}{max(rates):>9.1f}{median / base:>9.2f}x")


if __name__ == "__main__":
    main()
