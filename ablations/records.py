"""What the tables and figures read from the results store: a run's complete record (a typed
``repnext.schema.Record``), and the quantities (``METRICS``, named by the specs' columns) taken from its
payload."""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repnext.errors import StoreError
from repnext.schema import Classification, Detection, Equivalence, Gradcam, Latency, Record, Released, Segmentation
from repnext.store import RunPaths, read_record

from .spec import Run, TableSpec


@dataclass(frozen=True)
class Metric:
    header: str
    reads: type | tuple[type, ...]  # the payload type(s) (``repnext.schema``) holding the quantity
    read: Callable[[Any], float | None]  # the quantity from such a payload; None: the run has none
    decimals: int = 2  # where the paper printed no value to take the precision from
    comparable: bool = True  # False: a delta to the paper's value means nothing (measured on other hardware)
    trained: bool = False  # a result of training: comparable only when the run trained on the paper's dataset
    fmt: str | None = None  # format where the paper has no value (default: ``decimals`` fixed-point)

    def value(self, record: Record) -> float | None:
        """The quantity of ``record``; None from a record of another kind (a run id's imported training log
        also serves the released table's cell of that id, which evaluates a checkpoint)."""
        return self.read(record.payload) if isinstance(record.payload, self.reads) else None


def _setting(field: str) -> Callable[[Classification], float | None]:
    """A count of the paper's setting (params in M, MACs in G), of a run measured for a table's cell."""
    scale = 1e9 if field == "macs" else 1e6
    return lambda p: None if p.paper_setting is None else getattr(p.paper_setting, field) / scale


def _form(form: str, field: str, scale: float = 1.0) -> Callable[[Equivalence], float | None]:
    return lambda p: getattr(p.forms[form], field) / scale


def _cam(method: str, which: str, field: str) -> Callable[[Gradcam], float | None]:
    """A CAM mass; None where there is none (no digit mask: photos; an empty map: a random model's)."""
    def read(p: Gradcam) -> float | None:
        entry = p.cam[method] if method in p.cam else None
        mass = None if entry is None else getattr(entry, which)
        return None if mass is None else getattr(mass, field)
    return read


def _cpu_latency(form: str | None) -> Callable[[Latency], float | None]:
    """Batch-1 latency of ``form`` (None: the fused one); None for a model without that form."""
    def read(p: Latency) -> float | None:
        speed = p.cpu.forms.get(form or p.cpu.fused_form)
        return None if speed is None else speed.latency_ms
    return read


METRICS = {
    "top1": Metric("Top-1 (%)", Classification, lambda p: p.best.acc1, trained=True),
    "top5": Metric("Top-5 (%)", Classification, lambda p: p.best.acc5, trained=True),
    "params_m": Metric("Params (M)", Classification, _setting("fused_params")),
    "gmacs": Metric("GMACs", Classification, _setting("macs")),
    "train_params_m": Metric("Training-form params (M)", Classification, _setting("train_params")),
    "train_img_s": Metric("Training images/s", Classification, lambda p: p.train_images_per_second, 1,
                          comparable=False),  # None: imported
    # the equivalence table (repnext.equivalence): errors against the training form, the single-branch form
    "err_official": Metric("Official fuse error", Equivalence, _form("official", "max_abs_error"), fmt="{:.1e}"),
    "err_full": Metric("Full fuse error", Equivalence, _form("full", "max_abs_error"), fmt="{:.1e}"),
    "err_single_branch": Metric("Single-branch error", Equivalence, _form("single_branch", "max_abs_error"),
                                fmt="{:.1e}"),
    "err_single_branch_plain": Metric("Naive single-branch error", Equivalence,
                                      _form("single_branch_plain", "max_abs_error"), fmt="{:.1e}"),
    "params_official_m": Metric("Params (M)", Equivalence, _form("official", "params", 1e6)),
    "gmacs_official": Metric("GMACs", Equivalence, _form("official", "macs", 1e9)),
    "params_single_branch_m": Metric("Single-branch params (M)", Equivalence, _form("single_branch", "params", 1e6)),
    "gmacs_single_branch": Metric("Single-branch GMACs", Equivalence, _form("single_branch", "macs", 1e9)),
    "params_e_m": Metric("E model params (M)", Equivalence,
                         lambda p: None if p.e_model is None else p.e_model.fused_params / 1e6),
    "gmacs_e": Metric("E model GMACs", Equivalence, lambda p: None if p.e_model is None else p.e_model.macs / 1e9),
    # the released table (repnext.validate): a checkpoint's top-1 in the training and the fused form
    "released_top1": Metric("Top-1 (%)", Released, lambda p: p.unfused.acc1, trained=True),
    "released_fused_top1": Metric("Fused top-1 (%)", Released, lambda p: p.fused.acc1, trained=True),
    "logit_diff": Metric("Largest logit difference", Released, lambda p: p.max_logit_diff, fmt="{:.1e}",
                         comparable=False),
    "throughput_img_s": Metric("Throughput (img/s)", (Classification, Latency),
                               lambda p: None if p.throughput is None else p.throughput.images_per_second, 0,
                               comparable=False),
    # the latency table (repnext.latency): this machine's timings beside the paper's iPhone 12 ones, so no delta
    "latency_ms": Metric("Latency (ms)", Latency, _cpu_latency(None), comparable=False),
    "latency_train_ms": Metric("Training-form latency (ms)", Latency, _cpu_latency("train"), comparable=False),
    "latency_single_branch_ms": Metric("Single-branch latency (ms)", Latency, _cpu_latency("single_branch"),
                                       comparable=False),
    "gpu_throughput_img_s": Metric("GPU throughput (img/s)", Latency,
                                   lambda p: None if p.gpu is None else p.gpu.images_per_second, 0, comparable=False),
    "backbone_latency_ms": Metric("Backbone latency (ms)", Latency,
                                  lambda p: None if p.backbone is None else p.backbone.latency_ms, comparable=False),
    # --- the gradcam table (repnext.cam.run_cell, the paper's Figure 3): accuracy, CAM mass on the digit ---
    "cam_top1": Metric("Top-1 on the CAM images (%)", Gradcam,
                       lambda p: None if p.accuracy is None else p.accuracy.acc1, 1),
    **{f"{key}_{part}": Metric(f"{title}: {label}", Gradcam, _cam(method, which, field), 3, comparable=False)
       for key, method, title in (("gradcam", "gradcam", "Grad-CAM"), ("gradcampp", "gradcam++", "Grad-CAM++"))
       for part, which, field, label in (("on_digit", "trained", "mass_on_digit", "mass on digit"),
                                         ("on_background", "trained", "mass_on_background", "mass on background"),
                                         ("random_on_digit", "random", "mass_on_digit", "random init, on digit"))},
}

# --- the dense tables (repnext.dense): COCO APs and ADE20K mIoU (percent) from the record's ``metrics`` ---
METRICS.update({
    key: Metric(header, kind, lambda p, k=key: getattr(p.metrics, k), 1, trained=True)
    for kind, columns in ((Detection, (("box_ap", "AP box"), ("box_ap50", "AP50 box"), ("box_ap75", "AP75 box"),
                                       ("mask_ap", "AP mask"), ("mask_ap50", "AP50 mask"),
                                       ("mask_ap75", "AP75 mask"), ("box_ap_final", "AP box, final epoch"))),
                          (Segmentation, (("miou", "mIoU (%)"), ("miou_best", "mIoU, best evaluation (%)"))))
    for key, header in columns
})


_UNREADABLE: set[str] = set()  # records already reported unreadable (a table reads each record several times)


def _read_record(path: Path, run: Run) -> Record | None:
    """``path``'s record; an unreadable one, or one not of its kind's schema, is named (once) and counts as
    missing: the table goes on."""
    try:
        return read_record(path)
    except StoreError as e:
        if str(e) not in _UNREADABLE:
            _UNREADABLE.add(str(e))
            print(f"warning: {e}; run {run.run_id} counts as not complete", file=sys.stderr)
        return None


def complete_record(run: Run, results: Path) -> Record | None:
    record = _read_record(RunPaths(run.folder(results)).record, run)
    if record is None:  # an imported run serves every table with its cell (one run published twice upstream)
        found = (_read_record(p, run) for p in sorted(results.glob(f"*/{run.run_id}/record.json")))
        record = next((r for r in found if r is not None and r.imported), None)
    return record if record is not None and record.complete else None


def imported_record(run: Run, results: Path) -> Record | None:
    record = complete_record(run, results)
    return record if record is not None and record.imported else None


def official_runs(spec: TableSpec, results: Path) -> list[Run]:
    """The paper-scale cells of ``spec.official_models`` that an imported official log fills (e.g. the compact
    table's StarNet-S1): rows shown beside the table's own, never run."""
    if not spec.official_models:
        return []
    cells = dataclasses.replace(spec, grid=dict(spec.grid, model=list(spec.official_models))).expand("full")
    models = {run.config.model for run in cells if imported_record(run, results) is not None}
    return [run for run in cells if run.config.model in models]
