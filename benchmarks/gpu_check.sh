#!/usr/bin/env bash
# The GPU check, in one call of about 10 minutes on one H100/H200, everything under one folder:
#   1. the speed table, batch 64 and 256, bf16, with and without the captured step (speed.py --capture)
#   2. the teacher families at their real sizes (ADM-64, SD-1.5, DiT-XL/2), batch 16
#   3. teacher-training throughput, 200 steps (workers vs batches cut on the device vs compiled)
#   4. the probe's images/s (55,000 images x 5 timesteps, bf16)
# then a short table (summary.md), printed last. Each section has its own time limit and a log; one
# that fails or runs out is reported as missing and the rest still run. Installs nothing.
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] OUT   (the flag before or after OUT)
#   --dry-run: the same sections on the CPU with tiny sizes (well under 2 minutes); a test runs it.
# The machine needs this project's dependencies (a venv from `make install`, or the CUDA build of
# torch and `pip install -e .`); src/ and benchmarks/ go on PYTHONPATH here, and PY picks .venv/bin/python when
# there is one, else python3.
set -uo pipefail
usage="usage: bash benchmarks/gpu_check.sh [--dry-run] OUT  (flags before or after OUT)"
out="" dry=""
for arg in "$@"; do  # flags in any order; anything else unknown stops here, before a file is written
  case "$arg" in
    --dry-run) dry=--dry-run ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "unknown option $arg; $usage" >&2; exit 2 ;;
    *) if [[ -n "$out" ]]; then echo "two output folders ($out, $arg); $usage" >&2; exit 2; fi; out=$arg ;;
  esac
done
if [[ -z "$out" ]]; then echo "$usage" >&2; exit 2; fi
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"

section() {  # section NAME LIMIT_SECONDS COMMAND...: run it with a time limit, its output in NAME.log
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local status=$?
  tail -n 4 "$out/$name.log"
  if [[ $status -ne 0 ]]; then
    echo "   $name failed or ran out of time (status $status): see $out/$name.log"
  fi
  echo "   $name: $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
if [[ "$dry" == "--dry-run" ]]; then
  section speed-b4 120 $PY benchmarks/speed.py --dry-run --capture aot_eager --out "$out/speed-b4.json"
  section families 120 $PY benchmarks/speed.py --families adm-tiny --family-batch 2 --repeats 1 \
    --out "$out/families.json"
  section teacher-training 120 $PY benchmarks/teacher_training.py --dry-run --out "$out/teacher-training.json"
  section probe 120 $PY benchmarks/probe_speed.py --dry-run --out "$out/probe-speed.json"
else
  for batch in 64 256; do
    section "speed-b$batch" 100 $PY benchmarks/speed.py --device cuda --precision bf16 --batch-size $batch \
      --capture --out "$out/speed-b$batch.json"
  done
  section families 150 $PY benchmarks/speed.py --device cuda --families adm64,sd15,dit-xl2 --family-batch 16 \
    --out "$out/families.json"
  section teacher-training 150 $PY benchmarks/teacher_training.py --device cuda --precision bf16 --compile \
    --out "$out/teacher-training.json"
  section probe 90 $PY benchmarks/probe_speed.py --accelerator gpu --precision bf16 --out "$out/probe-speed.json"
fi
$PY benchmarks/gpu_summary.py "$out"
