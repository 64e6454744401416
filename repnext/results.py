"""The import of official logs into the results store (``repnext.store``).

    python -m repnext.results import [--dry-run] [--force] $(find logs -name '*.txt' -o -name '*_summary.csv')

imports official training logs (``repnext.logs``) as records. A record is never replaced by another file's
unless ``--force`` is given: re-importing a file, or a byte-identical copy, changes nothing.
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m repnext.results: a bad argument is answered before the imports below
    import sys

    if not any(arg.endswith(".json") for arg in sys.argv[1:]):  # the dense logs' command parses its own
        from repnext.cli import import_parser

        import_parser().parse_args()

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .cli import import_parser
from .dense import official_logs as dense_logs
from .files import atomic_write_text
from .logs import LogImportError, ParsedLog, build_record, identify, parse
from .store import DEFAULT_RESULTS, RunPaths, log_text, read_json, write_json, write_record

# --- importing official logs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Imported:
    """What importing one file did (or, with --dry-run, would do)."""
    table: str
    record: dict
    action: str          # "imported" | "unchanged" | "would import" | "replaced" | "would replace"
    note: str = ""       # what it was the same as, or what it replaced


def _describe(record: dict) -> str:
    best = record["best"]
    return (f"{record['model']}, {record['recipe']} recipe, {record['data']}, {record['epochs']} epochs, "
            f"{'distilled' if record['distillation'] else 'not distilled'}, batch {record['batch_size']}: "
            f"best top-1 {best['acc1']:.2f} / top-5 {best['acc5']:.2f} (epoch {best['epoch']})")


def _origin(record: dict, folder: Path) -> str:
    if record.get("source") == "imported":
        return f"{folder} (imported from {record.get('source_file')})"
    return f"{folder} (a trained run, best top-1 {record.get('best', {}).get('acc1')})"


def _same_source(record: dict, folder: Path, log: ParsedLog, text: str) -> bool:
    if record.get("source_sha256"):
        return record["source_sha256"] == log.sha256
    log_file = RunPaths(folder).log  # a record imported before hashes were kept: compare what it holds
    return log_file.is_file() and log_file.read_text() == text


def _read_record(path: Path) -> dict | None:
    try:
        return read_json(path)
    except ValueError:
        raise LogImportError(f"{path}: not a JSON record; move it away or fix it, then import again") from None


def _imported_records(results: Path, run_id: str) -> list[tuple[Path, dict]]:
    """The imported records of a run id, in any table of the store."""
    found = ((path.parent, _read_record(path)) for path in sorted(results.glob(f"*/{run_id}/record.json")))
    return [(folder, r) for folder, r in found if r is not None and r.get("source") == "imported"]


def _check_target(log: ParsedLog, paths: RunPaths, existing: dict | None) -> None:
    if existing is not None and existing.get("source") != "imported":
        raise LogImportError(f"{log.path}: {paths.record} holds a trained run; pass --force to replace it")
    if existing is None and paths.checkpoint.is_file():
        raise LogImportError(f"{log.path}: {paths.root} holds an unfinished trained run; pass --force to replace it")


def _planned_copy(log: ParsedLog, run_id: str, planned: dict, force: bool) -> ParsedLog | None:
    """A dry run writes nothing: two files of one run in one call meet here instead of in the store. Returns
    the file planned before this one when they are the same bytes."""
    other = planned.setdefault(run_id, log)
    if other is log:
        return None
    if other.sha256 != log.sha256 and not force:
        raise LogImportError(f"{log.path} and {other.path} are different files of one run ({run_id}); "
                             "pass --force to import the last one")
    return other if other.sha256 == log.sha256 else None


def import_log(path: str | Path, results: str | Path = DEFAULT_RESULTS, table: str | None = None,
               force: bool = False, dry_run: bool = False, planned: dict | None = None, **overrides) -> Imported:
    """Import one official log as its run's record. ``overrides``: model, data, distillation, epochs.
    ``planned``: run id -> the file a dry run of the same call would have imported for it (updated)."""
    path = Path(path).expanduser().resolve()
    log = parse(path)
    config, run_table = identify(log, **overrides)
    table = table or run_table
    if not re.fullmatch(r"[\w.-]+", table):
        raise LogImportError(f"{path}: --table {table!r} is not a folder name")
    history, record = build_record(log, config, table)
    text = log_text(history)
    results = Path(results).expanduser()
    paths = RunPaths(results / table / config.run_id)
    existing = _read_record(paths.record)
    if not force:
        _check_target(log, paths, existing)
    for folder, other in _imported_records(results, config.run_id):
        if _same_source(other, folder, log, text):  # this file again, or a copy of it: one run
            same = "" if other.get("source_file") == str(path) else f"same bytes as {other.get('source_file')}"
            return Imported(folder.parent.name, other, "unchanged", same)
        if not force:
            raise LogImportError(f"{path} and {other.get('source_file')} are different files of one run "
                                 f"({config.run_id}), already imported into {folder}; pass --force to replace it")
    replaced = f"replaced {_origin(existing, paths.root)}" if existing is not None else ""
    if dry_run:
        copy = _planned_copy(log, config.run_id, planned if planned is not None else {}, force)
        if copy is not None:
            return Imported(table, record, "unchanged", f"same bytes as {copy.path}")
        return Imported(table, record, "would replace" if replaced else "would import", replaced)
    write_json(paths.config, config.resolve().as_dict())
    atomic_write_text(paths.log, text)
    write_record(paths.record, record)  # last: a record marks the run done
    return Imported(table, record, "replaced" if replaced else "imported", replaced)


def main(argv: list[str] | None = None) -> int:
    args = import_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("model", "data", "distillation", "epochs")}
    counts: dict[str, int] = {}
    planned: dict[str, ParsedLog] = {}
    for path in args.paths:
        try:
            done = import_log(path, args.results, args.table, args.force, args.dry_run, planned, **overrides)
        except (LogImportError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            counts["failed"] = counts.get("failed", 0) + 1
            continue
        counts[done.action] = counts.get(done.action, 0) + 1
        r = done.record
        print(f"{done.action} {done.table}/{r['run_id']}: {_describe(r)} <- {Path(path).name}"
              + (f" ({done.note})" if done.note else ""))
    if len(args.paths) > 1:
        print(f"{len(args.paths)} files: " + ", ".join(f"{n} {action}" for action, n in counts.items()))
    return 1 if counts.get("failed") else 0


def cli(argv: list[str] | None = None) -> int:
    """``python -m repnext.results`` and ``repnext-results``: mmdet/mmseg JSON logs go to the dense tables'."""
    argv = sys.argv[1:] if argv is None else argv
    return dense_logs.main(argv) if any(arg.endswith(".json") for arg in argv) else main(argv)


if __name__ == "__main__":
    sys.exit(cli())
