"""Run by tests/test_train.py as each rank of a DDP (gloo) job, under torchrun or as plain processes with
SLURM's variables. ``ddp_worker.py OUTPUT DUMP [MODE]``; MODE:

* ``run`` (default): one smoke run; each rank dumps its parameters and which store files it wrote;
* ``resume``: an uninterrupted run into OUTPUT/a, then OUTPUT/b saved whenever rank 0's clock says so,
  stopped mid-epoch at rank 1's request only, and resumed; rank 0 compares the two (``resume_rank0.json``);
* ``nan``: rank 1's loss turns non-finite at its 3rd step; each rank dumps the error it stopped with;
* ``die``: rank 1's process ends at its 3rd step; each rank dumps the error it stopped with (a lost peer);
* ``collectives`` (CUDA, one rank): the engine's collectives and a DDP step on the gloo + NCCL group.
"""
import json
import math
import os
import sys
from pathlib import Path

import timm
import torch

import repnext.runtime as runtime
import repnext.train as engine
from repnext.config import RunConfig

output, dump = Path(sys.argv[1]), Path(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "run"
env = runtime.launch_env()
rank = env.rank
config = RunConfig(model="repnext_m0", data="synthetic", epochs=2, batch_size=16, img_size=32)


def spy_writes() -> list[str]:
    writes = []
    for name in ("write_log", "save_checkpoint", "write_json", "write_record"):
        original = getattr(engine, name)

        def spy(path, *args, _original=original, **kwargs):
            writes.append(Path(path).name)
            return _original(path, *args, **kwargs)

        setattr(engine, name, spy)
    return writes


def run() -> None:
    writes = spy_writes()
    captured = {}
    original_evaluate = engine.evaluate

    def evaluate_and_capture(model, *args, **kwargs):
        captured.setdefault("model", model)  # the training-form model (the last call gets the fused one)
        return original_evaluate(model, *args, **kwargs)

    engine.evaluate = evaluate_and_capture
    engine.train(config, output, progress=False)
    params = {k: v for k, v in captured["model"].state_dict().items()}
    torch.save(params, dump / f"params_rank{rank}.pth")
    (dump / f"writes_rank{rank}.json").write_text(json.dumps(writes))


def resume() -> None:
    uninterrupted = engine.train(config, output / "a", progress=False, sync_steps=2)
    calls = iter(range(1000))
    stop_at = 5 if rank == 1 else -1  # epoch 1, step 1 of 4: only rank 1 is asked; the ranks must agree
    try:
        # rank 0's clock alone finds a periodic save due at every agreement: the ranks must save together
        engine.train(config, output / "b", progress=False, sync_steps=2, should_stop=lambda: next(calls) == stop_at,
                     checkpoint_interval=0.0 if rank == 0 else 1e9)
        raise AssertionError("the run was not interrupted")
    except engine.Interrupted as e:
        stopped = str(e)
    resumed = engine.train(config, output / "b", progress=False, sync_steps=2)
    if rank == 0:
        ckpt_b = (output / "a" / "log.txt").read_text(), (output / "b" / "log.txt").read_text()
        (dump / "resume_rank0.json").write_text(json.dumps({
            "stopped": stopped, "same_log": ckpt_b[0] == ckpt_b[1], "log_a": ckpt_b[0], "log_b": ckpt_b[1],
            "same_final": uninterrupted["final"] == resumed["final"]}))


def failing(action) -> None:
    """Run with ``action`` applied to rank 1's 3rd step; dump the error this rank stopped with."""
    original, calls = engine.train_step, iter(range(1000))

    def step(*args, **kwargs):
        loss = original(*args, **kwargs)
        return action(loss) if rank == 1 and next(calls) == 2 else loss

    engine.train_step = step
    try:
        engine.train(config, output, progress=False, sync_steps=3)
        error = None
    except engine.TrainingError as e:
        error = str(e)
    (dump / f"error_rank{rank}.json").write_text(json.dumps(error))
    if error is not None:
        sys.exit(1)


def collectives() -> None:
    device = engine.pick_device("auto", env)
    torch.cuda.set_device(device)
    torch.distributed.init_process_group(runtime.backend_for(device))
    model = timm.create_model("repnext_m0", num_classes=10).to(device).to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device])
    x = torch.randn(8, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=device)
    loss = engine.train_step(ddp, model, engine.DistillationLoss(torch.nn.CrossEntropyLoss()),
                             torch.optim.AdamW(model.parameters()), None, config.resolve().recipe, x, y, "none")
    timm.utils.distribute_bn(model, 1, reduce=True)  # BatchNorm buffers: CUDA tensors, through NCCL
    on_device = torch.ones(3, device=device)
    torch.distributed.all_reduce(on_device)
    bad = torch.tensor(-1.0, dtype=torch.float64, device=device)
    (dump / "collectives.json").write_text(json.dumps({
        "device": str(device), "backend": torch.distributed.get_backend_config(), "loss": loss.item(),
        "host_sum": runtime.all_sum([1.0, 2.5], env), "device_sum": on_device.tolist(),
        "agree": engine.agree(env, True, True, bad, torch.zeros_like(bad))}))


def die(loss):
    os._exit(3)


if mode == "run":
    run()
elif mode == "resume":
    resume()
elif mode == "nan":
    failing(lambda loss: loss * math.nan)
elif mode == "die":
    failing(die)
elif mode == "collectives":
    collectives()
torch.distributed.destroy_process_group()
