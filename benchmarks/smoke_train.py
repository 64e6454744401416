"""Wall time and throughput of a smoke training run on this machine (default: repnext_m0, the repvit recipe,
scikit-learn's digits), with its accuracy.

    python benchmarks/smoke_train.py [--model repnext_m0] [--recipe repvit] [--output DIR]
    python benchmarks/smoke_train.py --model repnext_m1 --data synthetic --img-size 224 --epochs 1 \
        --batch-size 128 --device cuda      # a GPU: bf16 autocast and channels_last come from the profile

Without --output the run goes to a fresh temporary folder (so it really trains); with one, a finished run
is reported as stored.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from repnext.config import RunConfig
from repnext.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="repnext_m0")
    parser.add_argument("--recipe", default="repvit")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output")
    args = parser.parse_args()
    config = RunConfig(model=args.model, recipe=args.recipe, profile="smoke", data=args.data, img_size=args.img_size,
                       epochs=args.epochs, batch_size=args.batch_size, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        record = train(config, args.output or tmp)
        wall = time.perf_counter() - start
    env = record["environment"]
    print(f"{args.model}, recipe {args.recipe}, smoke profile, {record['data']} ({record['img_size']} px, "
          f"{record['epochs']} epochs, batch {record['batch_size']})")
    print(f"torch {env['torch']}, timm {env['timm']}, {env['threads']} thread(s), {env['cpu']}, "
          f"{env['cpu_count']} CPUs")
    print(f"wall time {wall:.1f} s (training {record['train_time_s']:.1f} s), "
          f"train {record['train_images_per_second']:.1f} img/s, eval {record['eval_images_per_second']:.1f} img/s")
    print(f"best top-1 {record['best']['acc1']:.2f} (epoch {record['best']['epoch']}), final top-1 "
          f"{record['final']['acc1']:.2f}, fused top-1 {record['fused']['acc1']:.2f}")


if __name__ == "__main__":
    main()
