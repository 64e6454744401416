"""The latency table's measurements: how fast models' forms run on the machine running the job (no training).

``measure_side_by_side`` times the models of a table or figure together in one process and writes each one's
``record.json`` (atomically); ``run_cell`` is the latency table's cell (the contract of ``repnext.cells``):

* CPU, 224 px: batch-1 latency (ms) and batch-16 throughput (img/s) of every form each model has (RepNeXt:
  ``train``, ``full`` = the fused model, ``single_branch``; timm models: ``train`` and ``fused``), every form
  of every model interleaved in rounds by ``repnext.bench``, so a drift in machine speed hits all alike;
  medians reported, with every round's timing and, per model, its fused form's paired speedups over the other
  models' (``paired_speedups``: the median of same-round ratios, in which the drift cancels);
* GPU, when CUDA is there: the papers' throughput (``repnext.bench.gpu_throughput``), one model at a time.
  Without CUDA: ``gpu_missing`` says so;
* the 512x512 ``features_only`` backbone latency (batch 1, fused) of the models the papers use as detection /
  segmentation backbones (``backbone_models``), interleaved the same way;
* optionally the Core ML export facts of the fused model (op count, package size; prediction and so latency
  need macOS, so on Linux ``latency_ms`` is None with the reason).

Every measurement carries its device, batch, resolution, dtype, memory format and threads; the record carries
the environment (host, CPU/GPU, torch/timm versions, load average) and the run ids timed with it
(``side_by_side``). The table spec gives smoke few rounds and full many (resolved when it expands).
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
from .models import is_repnext
from .runtime import Dist, cpu_name, environment
from .store import RunPaths, write_record

REPNEXT_FORMS = ("train", "full", "single_branch")
BACKBONE_MODELS = ("repnext_m3", "repnext_m4", "repnext_m5", "repvit_m1_1", "repvit_m1_5", "repvit_m2_3")


def cpu_forms(name: str) -> tuple[str, ...]:
    """The forms timed on the CPU (RepNeXt's deployed one is ``full``; a timm model's is its last)."""
    return REPNEXT_FORMS if is_repnext(name) else forms_of(name)


def _summary(seconds: list[float], batch: int) -> dict:
    med = statistics.median(seconds)
    if batch == 1:
        return {"latency_ms": 1e3 * med, "latency_ms_min": 1e3 * min(seconds), "latency_round_s": seconds}
    return {"throughput_img_s": batch / med, "throughput_img_s_max": batch / min(seconds),
            "throughput_round_s": seconds}


def paired_speedups(seconds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """For each model, how many times faster it ran than each other one: the median over rounds of the
    same-round ratio of their timings. Timed in the same rounds, a drift in machine load cancels."""
    return {name: {other: statistics.median(r / s for r, s in zip(ref, mine, strict=True))
                   for other, ref in seconds.items() if other != name} for name, mine in seconds.items()}


def cpu_speed(names: list[str], rounds: int, latency_iters: int, batch: int = 16, img_size: int = 224,
              channels_last: bool = True) -> dict[str, dict]:
    """Per model: batch-1 latency and batch-``batch`` throughput of every form on the CPU (float32), every form
    of every model interleaved round by round, and the fused forms' paired speedups over the other models."""
    dev = torch.device("cpu")
    # a timm model's forms are found by building it: once per model, not per case
    own, deployed = {name: cpu_forms(name) for name in names}, {name: fused_form(name) for name in names}
    forms = list(dict.fromkeys(form for name in names for form in own[name]))
    load = os.getloadavg()
    cases = run(names, ["latency"], forms, batch, img_size, rounds, dev, "none", [channels_last], latency_iters,
                progress=False)
    cases += run(names, ["throughput"], forms, batch, img_size, rounds, dev, "none", [channels_last], 1,
                 progress=False)
    after = os.getloadavg()
    fused = {task: paired_speedups({c.model: c.seconds for c in cases if c.task == task
                                    and c.form == deployed[c.model]}) for task in ("latency", "throughput")}
    out = {}
    for name in names:
        forms_out = {form: {} for form in own[name]}
        for case in (c for c in cases if c.model == name):
            forms_out[case.form].update(_summary(case.seconds, case.batch))
        out[name] = {
            "device": f"{cpu_name()} (CPU)", "img_size": img_size, "latency_batch": 1, "throughput_batch": batch,
            "dtype": "float32", "channels_last": channels_last, "threads": torch.get_num_threads(),
            "rounds": rounds, "latency_iters": latency_iters, "fused_form": deployed[name],
            "load_avg_before": [round(x, 2) for x in load], "load_avg_after": [round(x, 2) for x in after],
            "forms": forms_out, "measured_with": [n for n in names if n != name],
            "paired_speedup": {task: fused[task][name] for task in fused}}
    return out


def backbone_latency(names: list[str], img_size: int = 512, rounds: int = 3, iters: int = 1,
                     channels_last: bool = True) -> dict[str, dict]:
    """Per model: batch-1 latency of the fused ``features_only`` backbone (every stage's output) at
    ``img_size``, the models interleaved round by round, with their paired speedups over each other."""
    dev = torch.device("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(1, 3, img_size, img_size).contiguous(memory_format=fmt)
    models, steps = {}, {}
    for name in names:
        models[name] = timm.utils.reparameterize_model(
            timm.create_model(name, features_only=True).eval()).to(memory_format=fmt)
        steps[name] = make_step(models[name], "latency", x, "none")
        steps[name]()  # warm-up
    seconds = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            seconds[name].append(timed(steps[name], dev, iters))
    paired = paired_speedups(seconds)
    out = {}
    for name, model in models.items():
        info = model.feature_info
        out[name] = {
            "latency_ms": 1e3 * statistics.median(seconds[name]), "latency_ms_min": 1e3 * min(seconds[name]),
            "latency_round_s": seconds[name], "form": "fused (timm reparameterize_model)",
            "out_indices": list(info.out_indices), "channels": info.channels(), "reductions": info.reduction(),
            "img_size": img_size, "batch": 1, "dtype": "float32", "channels_last": channels_last,
            "threads": torch.get_num_threads(), "rounds": rounds, "iters": iters, "device": f"{cpu_name()} (CPU)",
            "paired_speedup": paired[name]}
    return out


def coreml_facts(name: str, folder: Path, img_size: int = 224) -> dict:
    """Core ML export of the fused model: op count and histogram, package size; latency only on macOS."""
    from .export import export_coreml

    r = export_coreml(name, folder / f"{name}_{img_size}.mlpackage", img_size)
    ops = sum(n for op, n in r["ops"].items() if op != "const")
    keys = ("path", "compute_precision", "deployment_target", "size_bytes", "seconds", "coremltools", "latency_ms",
            "latency_missing", "fuse")
    return {"ops": ops, "op_histogram": r["ops"], **{k: r[k] for k in keys}}


def run_cell(config: dict | RunConfig, output: str | Path, *, side_by_side: list[dict] | None = None,
             rounds: int = 3, latency_iters: int = 2, throughput_batch: int = 16, img_size: int = 224,
             backbone_img_size: int = 512, backbone_models: list[str] | tuple[str, ...] | None = BACKBONE_MODELS,
             coreml: bool = False, gpu_warmup_s: float = 5.0, gpu_time_s: float = 10.0, gpu_max_batch: int = 16384,
             threads: int | None = None, channels_last: bool = True) -> dict:
    """Measure the runs ``side_by_side`` together (the runner gives an exclusive table's runs, ``config``'s among
    them; None: ``config`` alone) with ``measure_side_by_side``; return ``config``'s record."""
    runs = side_by_side or [{"config": config, "output": output}]
    folders = [Path(run["output"]).resolve() for run in runs]
    if Path(output).resolve() not in folders:
        raise ValueError(f"output {str(output)!r} is none of the side_by_side runs' folders: "
                         f"{[str(run['output']) for run in runs]}")
    records = measure_side_by_side(
        runs, rounds=rounds, latency_iters=latency_iters, throughput_batch=throughput_batch, img_size=img_size,
        backbone_img_size=backbone_img_size, backbone_models=backbone_models, coreml=coreml,
        gpu_warmup_s=gpu_warmup_s, gpu_time_s=gpu_time_s, gpu_max_batch=gpu_max_batch, threads=threads,
        channels_last=channels_last)
    return records[folders.index(Path(output).resolve())]


def measure_side_by_side(runs: list[dict], rounds: int = 3, latency_iters: int = 2,
                         throughput_batch: int = 16, img_size: int = 224, backbone_img_size: int = 512,
                         backbone_models: list[str] | tuple[str, ...] | None = BACKBONE_MODELS,
                         coreml: bool = False, gpu_warmup_s: float = 5.0,
                         gpu_time_s: float = 10.0, gpu_max_batch: int = 16384, threads: int | None = None,
                         channels_last: bool = True) -> list[dict]:
    """Measure the models of ``runs`` (each ``{"config": RunConfig or its dict, "output": run folder}``) in this
    process, their CPU timings interleaved round by round (see the module docstring), and write each run's
    ``record.json``; return the records in the order of ``runs``.

    ``backbone_models``: the models whose 512x512 backbone latency is measured (None: every model).
    ``threads``: torch's CPU threads (None: as set, e.g. by OMP_NUM_THREADS).
    """
    configs = [r["config"] if isinstance(r["config"], RunConfig) else RunConfig.from_dict(r["config"]) for r in runs]
    names, profile = [c.model for c in configs], configs[0].profile
    for name in names:
        if not timm.is_model(name):
            raise ValueError(f"unknown model {name!r}; see timm.list_models() (repnext registers its own)")
    if len(set(names)) < len(names) or {c.profile for c in configs} != {profile}:
        raise ValueError(f"runs timed side by side are distinct models of one profile; got "
                         f"{[(c.model, c.profile) for c in configs]}")
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    cpu = cpu_speed(names, rounds, latency_iters, throughput_batch, img_size, channels_last)
    backbones = backbone_latency([n for n in names if backbone_models is None or n in backbone_models],
                                 backbone_img_size, rounds, 1, channels_last)
    records = []
    for config, cell in zip(configs, runs):
        name, output = config.model, Path(cell["output"])
        record = {"status": "complete", "source": "measured", "model": name, "run_id": config.run_id,
                  "profile": profile, "side_by_side": [c.run_id for c in configs], "cpu": cpu[name],
                  "throughput": _throughput(cpu[name]), "gpu": None, "backbone": backbones.get(name),
                  "backbone_missing": None, "coreml": None, "coreml_missing": None}
        if torch.cuda.is_available():  # the papers' method, one model at a time (each fills the GPU)
            record["gpu"] = gpu_throughput(name, img_size, gpu_warmup_s, gpu_time_s, gpu_max_batch)
        record["gpu_missing"] = None if record["gpu"] else (
            f"no CUDA device on this machine ({cpu[name]['device']}); the GPU throughput was not measured")
        if record["backbone"] is None:
            record["backbone_missing"] = (f"{name} is not a detection/segmentation backbone in the papers "
                                          f"(backbone_models: {', '.join(backbone_models)})")
        if coreml:
            record["coreml"] = coreml_facts(name, output / "coreml", img_size)
        else:
            record["coreml_missing"] = f"Core ML export off in the {profile} profile (parameter coreml)"
        records.append(record)
    env = environment(torch.device("cuda" if torch.cuda.is_available() else "cpu"), Dist())
    seconds = round(time.perf_counter() - start, 3)  # the job's, for all its models
    for record, cell in zip(records, runs):
        record.update(environment=env, seconds=seconds)
        write_record(RunPaths(Path(cell["output"])).record, record)
    return records


def _throughput(cpu: dict) -> dict:
    """The fused form's CPU throughput in the schema of ``repnext.bench.throughput`` (the tables' column)."""
    form = cpu["fused_form"]
    return {"images_per_second": cpu["forms"][form]["throughput_img_s"],
            "form": form if form != "train" else "as built (nothing to fuse)", "batch": cpu["throughput_batch"],
            "img_size": cpu["img_size"], "channels_last": cpu["channels_last"], "rounds": cpu["rounds"],
            "threads": cpu["threads"], "device": cpu["device"]}


def summary(record: dict) -> str:
    """A few lines for the notebook: every form's CPU numbers, the GPU and backbone figures."""
    cpu = record["cpu"]
    lines = [f"{record['model']} on {cpu['device']}, {cpu['threads']} thread(s), {cpu['img_size']} px, "
             f"{'channels_last' if cpu['channels_last'] else 'NCHW'}, {cpu['dtype']}, {cpu['rounds']} rounds"]
    for form, v in cpu["forms"].items():
        mark = "  <- fused" if form == cpu["fused_form"] else ""
        lines.append(f"  {form:<14}{v['latency_ms']:9.2f} ms (batch 1){v['throughput_img_s']:10.1f} img/s "
                     f"(batch {cpu['throughput_batch']}){mark}")
    paired = cpu.get("paired_speedup", {}).get("latency")
    if paired:
        lines.append(f"  {cpu['fused_form']} form, batch 1, times faster than (paired rounds): "
                     + ", ".join(f"{other} {x:.2f}x" for other, x in paired.items()))
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
