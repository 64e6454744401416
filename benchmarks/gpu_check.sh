#!/usr/bin/env bash
# Every GPU check on one CUDA GPU, in under 10 minutes: tests/test_gpu.py (AMP steps in bf16 and fp16 with the
# scaler, the engine's collectives on an NCCL group, a distilled run, fused == unfused, the bench), then the
# papers' throughput of every model (python -m repnext.bench --all --device cuda --paper-throughput).
# Prints one table: each check, its result and its seconds (the throughputs in img/s). Exit 1 if any failed.
#     benchmarks/gpu_check.sh [OUT_DIR]      # logs, the junit report and the bench record go to OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device here; nothing was run" >&2
    exit 2
fi
timeout 240 "$PY" -m pytest -p no:xdist -p no:cacheprovider tests/test_gpu.py -q -rA --junitxml "$OUT/gpu_tests.xml" \
    > "$OUT/gpu_tests.log" 2>&1
tests_rc=$?
timeout 330 "$PY" -m repnext.bench --all --device cuda --paper-throughput --rounds 3 --results "$OUT" \
    > "$OUT/bench.log" 2>&1
bench_rc=$?
"$PY" - "$OUT" "$tests_rc" "$bench_rc" <<'PY'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, tests_rc, bench_rc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rows = []
xml = out / "gpu_tests.xml"
if xml.is_file():
    for case in ET.parse(xml).iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        result = "FAIL" if failed else "skipped" if case.find("skipped") is not None else "pass"
        rows.append((case.get("name"), result, f"{float(case.get('time', 0)):.1f} s"))
else:
    rows.append(("tests/test_gpu.py", f"did not run (exit {tests_rc})", ""))
records = sorted(out.glob("bench/*/record.json"))
if records:
    record = json.loads(records[-1].read_text())
    gpu = record["environment"].get("gpu")
    for name, v in record["paper_throughput"].items():
        rows.append((f"paper throughput {name} ({v['form']}, batch {v['batch']})", "pass",
                     f"{v['images_per_second']:.0f} img/s"))
    rows.insert(0, (f"GPU: {gpu}, torch {record['environment']['torch']}", "", ""))
else:
    rows.append(("python -m repnext.bench --all --device cuda --paper-throughput", f"FAIL (exit {bench_rc})",
                 f"see {out / 'bench.log'}"))
width = max(len(r[0]) for r in rows)
print(f"| {'check':<{width}} | result  | measured |")
print(f"|{'-' * (width + 2)}|---------|----------|")
for name, result, value in rows:
    print(f"| {name:<{width}} | {result:<7} | {value} |")
print(f"logs: {out}/gpu_tests.log, {out}/bench.log")
PY
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
