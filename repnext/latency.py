"""One cell of the latency table: how fast one model's forms run on the machine running the job (no training).

``measure_cell`` times, for one model, and writes everything into the run's ``record.json`` (atomically):

* CPU, 224 px: batch-1 latency (ms) and batch-16 throughput (img/s) of every form the model has (RepNeXt:
  ``train``, ``full`` = the fused model, ``single_branch``; timm models: ``train`` and ``fused``), interleaved
  in rounds by ``repnext.bench`` so a drift in machine speed hits every form alike; medians reported;
* GPU, when CUDA is there: the papers' throughput (RepNeXt's ``speed_gpu.py``; RepViT: "the maximum
  power-of-two batch size that fits in memory"): the fused model in float32, NCHW, no autocast, the largest
  power-of-two batch that fits, ``T0`` seconds of warm-up, then calls timed with a synchronisation after
  each until ``T1`` seconds are summed; images/s = batch / mean time. Without CUDA: ``gpu_missing`` says so;
* the 512x512 ``features_only`` backbone latency (batch 1, fused) of the models the papers use as detection /
  segmentation backbones (``backbone_models``);
* optionally the Core ML export facts of the fused model (op count, package size; prediction and so latency
  need macOS, so on Linux ``latency_ms`` is None with the reason).

Every measurement carries its device, batch, resolution, dtype, memory format and threads; the record carries
the environment (host, CPU/GPU, torch/timm versions, load average). Any parameter may be a ``{profile: value}``
dict (the table spec gives smoke few rounds and full many).
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import timm
import torch

from .bench import forms_of, fused_form, gpu_throughput, make_step, run, timed
from .config import RunConfig
from .profiles import for_profile
from .results import RunPaths, write_json
from .train import Dist, cpu_name, environment

REPNEXT_FORMS = ("train", "full", "single_branch")
BACKBONE_MODELS = ("repnext_m3", "repnext_m4", "repnext_m5", "repvit_m1_1", "repvit_m1_5", "repvit_m2_3")


def cpu_forms(name: str) -> tuple[str, ...]:
    """The forms timed on the CPU; the last one is the fused (deployed) form."""
    return REPNEXT_FORMS if name.startswith("repnext") else forms_of(name)


def _summary(seconds: list[float], batch: int) -> dict:
    med = statistics.median(seconds)
    return {"latency_ms": 1e3 * med, "latency_ms_min": 1e3 * min(seconds)} if batch == 1 else {
        "throughput_img_s": batch / med, "throughput_img_s_max": batch / min(seconds)}


def cpu_speed(name: str, rounds: int, latency_iters: int, batch: int = 16, img_size: int = 224,
              channels_last: bool = True) -> dict:
    """Batch-1 latency and batch-``batch`` throughput of every form on the CPU (float32)."""
    dev, forms = torch.device("cpu"), list(cpu_forms(name))
    load = os.getloadavg()
    latency = run([name], ["latency"], forms, batch, img_size, rounds, dev, "none", [channels_last],
                  latency_iters, progress=False)
    speed = run([name], ["throughput"], forms, batch, img_size, rounds, dev, "none", [channels_last], 1,
                progress=False)
    out = {form: {} for form in forms}
    for case in latency + speed:
        out[case.form].update(_summary(case.seconds, case.batch))
    return {"device": f"{cpu_name()} (CPU)", "img_size": img_size, "latency_batch": 1, "throughput_batch": batch,
            "dtype": "float32", "channels_last": channels_last, "threads": torch.get_num_threads(),
            "rounds": rounds, "latency_iters": latency_iters, "fused_form": fused_form(name),
            "load_avg_before": [round(x, 2) for x in load], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "forms": out}


def backbone_latency(name: str, img_size: int = 512, rounds: int = 3, iters: int = 1,
                     channels_last: bool = True) -> dict:
    """Batch-1 latency of the fused ``features_only`` backbone (every stage's output) at ``img_size``."""
    dev = torch.device("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.utils.reparameterize_model(timm.create_model(name, features_only=True).eval()).to(memory_format=fmt)
    x = torch.randn(1, 3, img_size, img_size).contiguous(memory_format=fmt)
    step = make_step(model, "latency", x, "none")
    step()  # warm-up
    seconds = [timed(step, dev, iters) for _ in range(rounds)]
    info = model.feature_info
    return {"latency_ms": 1e3 * statistics.median(seconds), "latency_ms_min": 1e3 * min(seconds),
            "form": "fused (timm reparameterize_model)", "out_indices": list(info.out_indices),
            "channels": info.channels(), "reductions": info.reduction(), "img_size": img_size, "batch": 1,
            "dtype": "float32", "channels_last": channels_last, "threads": torch.get_num_threads(),
            "rounds": rounds, "iters": iters, "device": f"{cpu_name()} (CPU)"}


def coreml_facts(name: str, folder: Path, img_size: int = 224) -> dict:
    """Core ML export of the fused model: op count and histogram, package size; latency only on macOS."""
    from .export import export_coreml

    r = export_coreml(name, folder / f"{name}_{img_size}.mlpackage", img_size)
    ops = sum(n for op, n in r["ops"].items() if op != "const")
    keys = ("path", "compute_precision", "deployment_target", "size_bytes", "seconds", "coremltools", "latency_ms",
            "latency_missing", "fuse")
    return {"ops": ops, "op_histogram": r["ops"], **{k: r[k] for k in keys}}


def measure_cell(config: dict | RunConfig, output: str | Path, rounds: int | dict = 3,
                 latency_iters: int | dict = 2, throughput_batch: int = 16, img_size: int = 224,
                 backbone_img_size: int = 512, backbone_models: list[str] | tuple[str, ...] | None = BACKBONE_MODELS,
                 coreml: bool | dict = False, gpu_warmup_s: float | dict = 5.0, gpu_time_s: float | dict = 10.0,
                 gpu_max_batch: int = 16384, threads: int | None = None, channels_last: bool = True) -> dict:
    """Measure ``config.model`` (see the module docstring) and write ``output/record.json``; return the record.

    ``backbone_models``: the models whose 512x512 backbone latency is measured (None: every model).
    ``threads``: torch's CPU threads (None: as set, e.g. by OMP_NUM_THREADS).
    """
    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    name, profile = config.model, config.profile
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}; see timm.list_models() (repnext registers its own)")
    if threads:
        torch.set_num_threads(threads)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rounds, latency_iters = for_profile(rounds, profile), for_profile(latency_iters, profile)

    cpu = cpu_speed(name, rounds, latency_iters, throughput_batch, img_size, channels_last)
    fused = cpu["forms"][cpu["fused_form"]]
    record = {
        "status": "complete", "source": "measured", "model": name, "run_id": config.run_id, "profile": profile,
        "cpu": cpu,
        # the fused form's CPU throughput in the schema of repnext.bench.throughput (the tables' column)
        "throughput": {"images_per_second": fused["throughput_img_s"],
                       "form": cpu["fused_form"] if cpu["fused_form"] != "train" else "as built (nothing to fuse)",
                       "batch": throughput_batch, "img_size": img_size, "channels_last": channels_last,
                       "rounds": rounds, "threads": cpu["threads"], "device": cpu["device"]},
    }
    if torch.cuda.is_available():
        record["gpu"] = gpu_throughput(name, img_size, for_profile(gpu_warmup_s, profile),
                                       for_profile(gpu_time_s, profile), gpu_max_batch)
        record["gpu_missing"] = None
    else:
        record["gpu"] = None
        record["gpu_missing"] = f"no CUDA device on this machine ({cpu['device']}); the GPU throughput was not measured"
    if backbone_models is None or name in backbone_models:
        record["backbone"] = backbone_latency(name, backbone_img_size, rounds, 1, channels_last)
        record["backbone_missing"] = None
    else:
        record["backbone"] = None
        record["backbone_missing"] = (f"{name} is not a detection/segmentation backbone in the papers "
                                      f"(backbone_models: {', '.join(backbone_models)})")
    if for_profile(coreml, profile):
        record["coreml"] = coreml_facts(name, output / "coreml", img_size)
        record["coreml_missing"] = None
    else:
        record["coreml"] = None
        record["coreml_missing"] = f"Core ML export off in the {profile} profile (parameter coreml)"
    record["environment"] = environment(torch.device("cuda" if record["gpu"] else "cpu"), Dist())
    record["seconds"] = round(time.perf_counter() - start, 3)
    write_json(RunPaths(output).record, record)
    return record


def summary(record: dict) -> str:
    """A few lines for the notebook: every form's CPU numbers, the GPU and backbone figures."""
    cpu = record["cpu"]
    lines = [f"{record['model']} on {cpu['device']}, {cpu['threads']} thread(s), {cpu['img_size']} px, "
             f"{'channels_last' if cpu['channels_last'] else 'NCHW'}, {cpu['dtype']}, {cpu['rounds']} rounds"]
    for form, v in cpu["forms"].items():
        mark = "  <- fused" if form == cpu["fused_form"] else ""
        lines.append(f"  {form:<14}{v['latency_ms']:9.2f} ms (batch 1){v['throughput_img_s']:10.1f} img/s "
                     f"(batch {cpu['throughput_batch']}){mark}")
    gpu = record["gpu"]
    lines.append(f"  GPU: {gpu['images_per_second']:.0f} img/s at batch {gpu['batch']} on {gpu['device']}"
                 if gpu else f"  GPU: {record['gpu_missing']}")
    bb = record["backbone"]
    lines.append(f"  backbone {bb['img_size']}x{bb['img_size']}: {bb['latency_ms']:.2f} ms" if bb
                 else f"  backbone: {record['backbone_missing']}")
    cm = record["coreml"]
    lines.append(f"  Core ML: {cm['ops']} ops, {cm['size_bytes'] / 1e6:.1f} MB; {cm['latency_missing'] or ''}" if cm
                 else f"  Core ML: {record['coreml_missing']}")
    return "\n".join(lines)
