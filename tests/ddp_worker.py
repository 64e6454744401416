"""Run by tests/test_train.py under torchrun: one smoke run with DDP (gloo), then each rank dumps its
parameters and which store files it wrote."""
import json
import os
import sys
from pathlib import Path

import torch

import repnext.train as engine
from repnext.config import RunConfig

output, dump = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])
writes = []
for name in ("write_log", "save_checkpoint", "write_json"):
    original = getattr(engine, name)

    def spy(path, *args, _original=original, **kwargs):
        writes.append(Path(path).name)
        return _original(path, *args, **kwargs)

    setattr(engine, name, spy)

config = RunConfig(model="repnext_m0", data="synthetic", epochs=2, batch_size=16, img_size=32)
captured = {}
original_evaluate = engine.evaluate


def evaluate_and_capture(model, *args, **kwargs):
    captured.setdefault("model", model)  # the training-form model (the last call gets the fused one)
    return original_evaluate(model, *args, **kwargs)


engine.evaluate = evaluate_and_capture
record = engine.train(config, output, progress=False)
params = {k: v for k, v in captured["model"].state_dict().items()}
torch.save(params, dump / f"params_rank{rank}.pth")
(dump / f"writes_rank{rank}.json").write_text(json.dumps(writes))
torch.distributed.destroy_process_group()
