"""The schema of ``record.json``: a common header (status, run id, model, profile, source, environment) and one
payload type per kind of run, as frozen dataclasses.

``parse_record`` turns a record's JSON object into a ``Record`` (its kind from an explicit ``kind`` field, else
from the keys only that kind has) and raises ``RecordError``, one line naming the file and the field, when a
field is missing or of the wrong type. Keys the schema does not name are ignored (a cell may record more than
the tables read). The JSON on disk is what the cells write; nothing here writes. Importing this module does
not import torch.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from .counts import Complexity  # params and MACs of a form at the paper's counting setting
from .errors import StoreError


class RecordError(StoreError):
    """A record that does not match its kind's schema."""


# --- pieces shared by several kinds ------------------------------------------------------------------------

@dataclass(frozen=True)
class Environment:
    """Where a run was measured (``repnext.runtime.environment``)."""
    host: str
    cpu: str
    threads: int
    device: str
    gpu: str | None
    torch: str
    timm: str
    platform: str | None = None
    python: str | None = None
    cpu_count: int | None = None
    world_size: int = 1
    hosts: list[str] | None = None
    repnext: str | None = None
    git_sha: str | None = None


@dataclass(frozen=True)
class Accuracy:
    """Top-1/top-5 (%) of one evaluation; ``epoch`` of a best one, ``loss`` where the evaluation has it."""
    acc1: float
    acc5: float
    epoch: int | None = None
    loss: float | None = None


@dataclass(frozen=True)
class Throughput:
    """Inference throughput in the schema of ``repnext.bench.throughput``."""
    images_per_second: float
    form: str
    batch: int
    img_size: int
    channels_last: bool
    threads: int
    device: str
    rounds: int | None = None


# --- one payload per kind ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Classification:
    """A training run (``repnext.train``), or one imported from an official log (``repnext.logs``)."""
    recipe: str
    data: str
    distillation: bool
    epochs: int
    img_size: int
    batch_size: int
    lr: float
    num_classes: int
    best: Accuracy
    final: Accuracy
    params: int
    fused_params: int
    macs: int
    fused: Accuracy | None = None  # trained here: the inference form's evaluation
    data_description: str | None = None
    train_images_per_second: float | None = None  # None: imported
    eval_images_per_second: float | None = None
    train_time_s: float | None = None
    paper_setting: Complexity | None = None  # a table's cell (``repnext.experiment.run_cell``)
    paper_settings: dict[str, Complexity] | None = None  # a substitute-data run standing for several datasets
    throughput: Throughput | None = None


@dataclass(frozen=True)
class FormCount:
    params: int
    macs: int
    max_abs_error: float


@dataclass(frozen=True)
class Equivalence:
    """``repnext.equivalence``: each fused form's error against the training form, and its counts."""
    img_size: int
    images: int
    seed: int
    logit_scale: float
    forms: dict[str, FormCount]
    e_model: Complexity | None = None


@dataclass(frozen=True)
class FormSpeed:
    latency_ms: float
    throughput_img_s: float
    latency_ms_min: float | None = None
    throughput_img_s_max: float | None = None
    latency_round_s: list[float] | None = None
    throughput_round_s: list[float] | None = None


@dataclass(frozen=True)
class CpuSpeed:
    device: str
    img_size: int
    throughput_batch: int
    dtype: str
    channels_last: bool
    threads: int
    rounds: int
    fused_form: str
    forms: dict[str, FormSpeed]
    latency_batch: int = 1
    latency_iters: int | None = None
    load_avg_before: list[float] | None = None
    load_avg_after: list[float] | None = None
    measured_with: list[str] | None = None
    paired_speedup: dict[str, dict[str, float]] | None = None


@dataclass(frozen=True)
class GpuThroughput:
    images_per_second: float
    batch: int
    device: str


@dataclass(frozen=True)
class BackboneLatency:
    latency_ms: float
    img_size: int
    device: str


@dataclass(frozen=True)
class Latency:
    """``repnext.latency``: this machine's timings of a model's forms."""
    cpu: CpuSpeed
    throughput: Throughput
    side_by_side: list[str]
    gpu: GpuThroughput | None = None
    gpu_missing: str | None = None
    backbone: BackboneLatency | None = None
    backbone_missing: str | None = None
    coreml: dict | None = None
    coreml_missing: str | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class CamMass:
    mass_on_digit: float
    mass_on_background: float
    digit_area: float | None = None
    per_pixel_ratio: float | None = None


@dataclass(frozen=True)
class CamMethod:
    """One CAM method's masses (digits only): the trained model's and a random initialisation's."""
    images: int | None = None
    trained: CamMass | None = None
    random: CamMass | None = None


@dataclass(frozen=True)
class CamImages:
    source: str
    n: int
    img_size: int
    stage: int
    map: list[int]


@dataclass(frozen=True)
class CamAccuracy:
    acc1: float
    n: int


@dataclass(frozen=True)
class CamFigure:
    png: str
    cams: str


@dataclass(frozen=True)
class Gradcam:
    """``repnext.cam.run_cell``: a model's CAMs (the paper's Figure 3) and their mass on the digit."""
    label: str
    num_classes: int
    images: CamImages
    methods: list[str]
    cam: dict[str, CamMethod]
    img_size: int
    figure: CamFigure
    accuracy: CamAccuracy | None = None
    checkpoint: str | None = None  # the full profile's weights file
    training: dict | None = None  # the substitute-data profile's run trained for the cell
    recipe: str | None = None
    data: str | None = None
    data_description: str | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class Released:
    """``repnext.validate.run_cell``: a checkpoint's accuracy in the training and the fused form."""
    checkpoint: str
    data: str
    img_size: int
    recipe: str
    unfused: Accuracy
    fused: Accuracy
    max_logit_diff: float
    images: int
    crop_pct: float | None = None
    interpolation: str | None = None


@dataclass(frozen=True)
class DetectionMetrics:
    """Percent; see ``repnext.dense``."""
    box_ap: float
    box_ap50: float
    box_ap75: float
    mask_ap: float
    mask_ap50: float
    mask_ap75: float
    box_ap_final: float
    best_epoch: int


@dataclass(frozen=True)
class SegmentationMetrics:
    miou: float
    miou_best: float
    best_iter: int
    aacc: float
    macc: float


@dataclass(frozen=True)
class Dense:
    """A detection or segmentation run (``repnext.dense.engine``), or one imported from an official log."""
    task: str
    data: str
    batch_size: int
    lr: float
    weight_decay: float
    recipe: str | None = None
    data_description: str | None = None
    img_size: int | None = None
    epochs: int | None = None
    iters: int | None = None
    num_classes: int | None = None
    params: int | None = None
    backbone_weights: str | None = None
    train_time_s: float | None = None
    untrained: dict | None = None
    history: list[dict] | None = None
    seed: int | None = None  # imported: what the log shows
    gpus: int | None = None
    samples_per_gpu: int | None = None
    shown: bool | None = None  # imported: the README's run of the cell


@dataclass(frozen=True, kw_only=True)
class Detection(Dense):
    metrics: DetectionMetrics


@dataclass(frozen=True, kw_only=True)
class Segmentation(Dense):
    metrics: SegmentationMetrics


@dataclass(frozen=True)
class Failed:
    """A run that ended with an error (``status: failed``)."""
    error: str
    epoch: int | None = None
    step: int | None = None
    rank: int | None = None


Payload = Classification | Equivalence | Latency | Gradcam | Released | Detection | Segmentation | Failed
PAYLOADS: dict[str, type] = {"classification": Classification, "equivalence": Equivalence, "latency": Latency,
                             "gradcam": Gradcam, "released": Released, "detection": Detection,
                             "segmentation": Segmentation, "failed": Failed}
# the key only a kind's records have, for records written without ``kind`` (every record so far)
KIND_KEYS = (("equivalence", "logit_scale"), ("latency", "cpu"), ("gradcam", "cam"), ("released", "max_logit_diff"),
             ("classification", "best"))
SOURCES = ("trained", "measured", "imported", "checkpoint")


@dataclass(frozen=True)
class Record:
    """A run's record: the header every kind shares, and ``payload``, its kind's fields."""
    kind: str
    status: str
    run_id: str | None
    payload: Payload
    model: str | None = None
    profile: str | None = None
    source: str | None = None  # trained | measured | imported | checkpoint (gradcam on given weights)
    environment: Environment | None = None  # None: imported from a log
    source_file: str | None = None  # imported: the official log and its format and hash
    source_format: str | None = None
    source_sha256: str | None = None

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def imported(self) -> bool:
        return self.source == "imported"


HEADER = ("status", "run_id", "model", "profile", "source", "environment", "source_file", "source_format",
          "source_sha256")


# --- parsing -----------------------------------------------------------------------------------------------

def record_kind(obj: dict, where: str = "record") -> str:
    """The kind of a record's JSON object: its ``kind`` field, else the kind whose key it holds."""
    kind = obj.get("kind")
    if kind is not None:
        if not isinstance(kind, str) or kind not in PAYLOADS:
            raise RecordError(f"{where}: kind {kind!r} is not one of {', '.join(PAYLOADS)}")
        return kind
    if obj.get("status") == "failed":
        return "failed"
    if obj.get("task") in ("detection", "segmentation"):
        return obj["task"]
    for kind, key in KIND_KEYS:
        if key in obj:
            return kind
    keys = ", ".join(k for _, k in KIND_KEYS)
    raise RecordError(f"{where}: cannot tell the record's kind: it has none of the keys {keys}, task or status "
                      f"'failed' (it has: {', '.join(obj) or 'nothing'})")


def parse_record(obj: dict, where: str | Path = "record") -> Record:
    """``obj`` (a record.json's object) as a typed ``Record``; ``where`` names it in the one-line errors."""
    where = str(where)
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record is a JSON object, not {type(obj).__name__}")
    kind = record_kind(obj, where)
    status = obj.get("status")
    if status not in ("complete", "failed") or (status == "failed") != (kind == "failed"):
        want = "'failed'" if kind == "failed" else "'complete'"
        raise RecordError(f"{where}: status is {status!r}; a {kind} record's is {want}")
    if kind != "failed":
        missing = [k for k in ("run_id", "model", "profile", "source") if obj.get(k) is None]
        if missing:
            raise RecordError(f"{where}: field {missing[0]} is missing (every complete record has run_id, model, "
                              "profile and source)")
        if obj["source"] not in SOURCES:
            raise RecordError(f"{where}: source is {obj['source']!r}, not one of {', '.join(SOURCES)}")
    payload = _build(PAYLOADS[kind], obj, "", where, kind)
    hints = _hints(Record)
    header = {k: None if obj.get(k) is None else _convert(obj[k], hints[k], k, where, kind) for k in HEADER}
    return Record(kind=kind, payload=payload, **header)


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _build(cls: type, obj: dict, path: str, where: str, kind: str):
    hints = _hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        name = f"{path}{field.name}"
        if field.name not in obj:
            if field.default is dataclasses.MISSING:
                raise RecordError(f"{where}: field {name} is missing (a {kind} record)")
            continue
        values[field.name] = _convert(obj[field.name], hints[field.name], name, where, kind)
    return cls(**values)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value, hint, name: str, where: str, kind: str):
    """``value`` checked against the type ``hint`` (dataclasses built from their objects)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], name, where, kind)
    elif origin is list and isinstance(value, list):
        return [_convert(v, args[0], f"{name}[{i}]", where, kind) for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return {k: _convert(v, args[1], f"{name}.{k}", where, kind) for k, v in value.items()}
    elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _build(hint, value, f"{name}.", where, kind)
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (str, bool, dict) and isinstance(value, hint):
        return value
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise RecordError(f"{where}: field {name} is {shown} ({type(value).__name__}); a {kind} record's is "
                      f"{_type_name(hint)}")
