"""What the tables and figures read from the results store: a run's complete record, and the quantities
(``METRICS``, named by the specs' columns) taken from records."""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repnext.errors import StoreError
from repnext.store import read_json

from .spec import Run, TableSpec


@dataclass(frozen=True)
class Metric:
    header: str
    value: Callable[[dict], float]
    decimals: int = 2  # where the paper printed no value to take the precision from
    comparable: bool = True  # False: a delta to the paper's value means nothing (measured on other hardware)
    trained: bool = False  # a result of training: comparable only when the run trained on the paper's dataset
    fmt: str | None = None  # format where the paper has no value (default: ``decimals`` fixed-point)


METRICS = {
    "top1": Metric("Top-1 (%)", lambda r: r["best"]["acc1"], trained=True),
    "top5": Metric("Top-5 (%)", lambda r: r["best"]["acc5"], trained=True),
    "params_m": Metric("Params (M)", lambda r: r["paper_setting"]["fused_params"] / 1e6),
    "gmacs": Metric("GMACs", lambda r: r["paper_setting"]["macs"] / 1e9),
    "train_params_m": Metric("Training-form params (M)", lambda r: r["paper_setting"]["train_params"] / 1e6),
    "train_img_s": Metric("Training images/s", lambda r: r.get("train_images_per_second"), 1,  # none if imported
                          comparable=False),
    # the equivalence table (repnext.equivalence): errors against the training form, the single-branch form
    "err_official": Metric("Official fuse error", lambda r: r["forms"]["official"]["max_abs_error"], fmt="{:.1e}"),
    "err_full": Metric("Full fuse error", lambda r: r["forms"]["full"]["max_abs_error"], fmt="{:.1e}"),
    "err_single_branch": Metric("Single-branch error", lambda r: r["forms"]["single_branch"]["max_abs_error"],
                                fmt="{:.1e}"),
    "err_single_branch_plain": Metric("Naive single-branch error",
                                      lambda r: r["forms"]["single_branch_plain"]["max_abs_error"], fmt="{:.1e}"),
    "params_official_m": Metric("Params (M)", lambda r: r["forms"]["official"]["params"] / 1e6),
    "gmacs_official": Metric("GMACs", lambda r: r["forms"]["official"]["macs"] / 1e9),
    "params_single_branch_m": Metric("Single-branch params (M)", lambda r: r["forms"]["single_branch"]["params"] / 1e6),
    "gmacs_single_branch": Metric("Single-branch GMACs", lambda r: r["forms"]["single_branch"]["macs"] / 1e9),
    "params_e_m": Metric("E model params (M)", lambda r: r["e_model"]["fused_params"] / 1e6),
    "gmacs_e": Metric("E model GMACs", lambda r: r["e_model"]["macs"] / 1e9),
    # the released table (repnext.validate): a checkpoint's top-1 in the training and the fused form
    # (.get: the imagenet table's imported log of the same run id has no evaluation of a checkpoint)
    "released_top1": Metric("Top-1 (%)", lambda r: (r.get("unfused") or {}).get("acc1"), trained=True),
    "released_fused_top1": Metric("Fused top-1 (%)", lambda r: (r.get("fused") or {}).get("acc1"), trained=True),
    "logit_diff": Metric("Largest logit difference", lambda r: r.get("max_logit_diff"), fmt="{:.1e}",
                         comparable=False),
    "throughput_img_s": Metric("Throughput (img/s)", lambda r: r["throughput"]["images_per_second"], 0,
                               comparable=False),
    # the latency table (repnext.latency): this machine's timings beside the paper's iPhone 12 ones, so no delta
    "latency_ms": Metric("Latency (ms)", lambda r: r["cpu"]["forms"][r["cpu"]["fused_form"]]["latency_ms"],
                         comparable=False),
    "latency_train_ms": Metric("Training-form latency (ms)", lambda r: r["cpu"]["forms"]["train"]["latency_ms"],
                               comparable=False),
    "latency_single_branch_ms": Metric("Single-branch latency (ms)",
                                       lambda r: r["cpu"]["forms"].get("single_branch", {}).get("latency_ms"),
                                       comparable=False),
    "gpu_throughput_img_s": Metric("GPU throughput (img/s)", lambda r: (r["gpu"] or {}).get("images_per_second"),
                                   0, comparable=False),
    "backbone_latency_ms": Metric("Backbone latency (ms)", lambda r: (r["backbone"] or {}).get("latency_ms"),
                                  comparable=False),
    # --- the gradcam table (repnext.cam.run_cell, the paper's Figure 3): accuracy, CAM mass on the digit ---
    "cam_top1": Metric("Top-1 on the CAM images (%)", lambda r: (r.get("accuracy") or {}).get("acc1"), 1),
    **{f"{key}_{part}": Metric(f"{title}: {label}", lambda r, m=method, w=which, f=field:
                               (((r.get("cam") or {}).get(m) or {}).get(w) or {}).get(f), 3, comparable=False)
       for key, method, title in (("gradcam", "gradcam", "Grad-CAM"), ("gradcampp", "gradcam++", "Grad-CAM++"))
       for part, which, field, label in (("on_digit", "trained", "mass_on_digit", "mass on digit"),
                                         ("on_background", "trained", "mass_on_background", "mass on background"),
                                         ("random_on_digit", "random", "mass_on_digit", "random init, on digit"))},
}

# --- the dense tables (repnext.dense): COCO APs and ADE20K mIoU (percent) from the record's ``metrics`` ---
METRICS.update({
    key: Metric(header, lambda r, k=key: r["metrics"][k], 1, trained=True)
    for key, header in (("box_ap", "AP box"), ("box_ap50", "AP50 box"), ("box_ap75", "AP75 box"),
                        ("mask_ap", "AP mask"), ("mask_ap50", "AP50 mask"), ("mask_ap75", "AP75 mask"),
                        ("box_ap_final", "AP box, final epoch"), ("miou", "mIoU (%)"),
                        ("miou_best", "mIoU, best evaluation (%)"))
})


_UNREADABLE: set[str] = set()  # records already reported unreadable (a table reads each record several times)


def _read_record(path: Path, run: Run) -> dict | None:
    """``path``'s record; an unreadable one is named (once) and counts as missing: the table goes on."""
    try:
        return read_json(path)
    except StoreError as e:
        if str(e) not in _UNREADABLE:
            _UNREADABLE.add(str(e))
            print(f"warning: {e}; run {run.run_id} counts as not complete", file=sys.stderr)
        return None


def complete_record(run: Run, results: Path) -> dict | None:
    record = _read_record(run.folder(results) / "record.json", run)
    if record is None:  # an imported run serves every table with its cell (one run published twice upstream)
        found = (_read_record(p, run) for p in sorted(results.glob(f"*/{run.run_id}/record.json")))
        record = next((r for r in found if r is not None and r.get("source") == "imported"), None)
    return record if record is not None and record.get("status") == "complete" else None


def imported_record(run: Run, results: Path) -> dict | None:
    record = complete_record(run, results)
    return record if record is not None and record.get("source") == "imported" else None


def official_runs(spec: TableSpec, results: Path) -> list[Run]:
    """The paper-scale cells of ``spec.official_models`` that an imported official log fills (e.g. the compact
    table's StarNet-S1): rows shown beside the table's own, never run."""
    if not spec.official_models:
        return []
    cells = dataclasses.replace(spec, grid=dict(spec.grid, model=list(spec.official_models))).expand("full")
    models = {run.config.model for run in cells if imported_record(run, results) is not None}
    return [run for run in cells if run.config.model in models]
