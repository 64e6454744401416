"""Records for tests of the tables: real ones (``tests/data/records``: what the cells wrote on the smoke
profile) carrying a test's own numbers, written through the store's schema check."""
import json
from pathlib import Path

from repnext.store import write_record

RECORDS = Path(__file__).parent / "data" / "records"
REAL = {"classification": "imagenet/repnext_m0-222ecf7cdb", "equivalence": "equivalence/repnext_m0-bb47474ded",
        "latency": "latency/repnext_m0-bb47474ded", "released": "released/repnext_m0-222ecf7cdb",
        "gradcam": "gradcam/repnext_m0-bb47474ded", "detection": "detection/repnext_m3-5249c2ed23",
        "segmentation": "segmentation/repnext_m3-5249c2ed23"}


def _merge(base: dict, changes: dict) -> dict:
    return {**base, **{k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                       for k, v in changes.items()}}


def real_record(kind: str, **changes) -> dict:
    """The real record of ``kind`` with ``changes`` merged in (dicts key by key, at any depth)."""
    return _merge(json.loads((RECORDS / REAL[kind] / "record.json").read_text()), changes)


def write_real_record(folder: Path, kind: str, **changes) -> dict:
    """``real_record(kind, **changes)`` as ``folder``'s record.json (the run id: the folder's name)."""
    record = real_record(kind, run_id=folder.name, **changes)
    write_record(folder / "record.json", record)
    return record
