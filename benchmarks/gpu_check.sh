#!/usr/bin/env bash
# One-GPU check in about 5 minutes: the speed table on the GPU in bf16 (and fp32 for reference),
# with torch.compile, the teacher families at their real sizes, and, when two GPUs exist, 1-GPU vs
# 2-process DDP distillation throughput.
# Usage: bash benchmarks/gpu_check.sh   (after `make install`; writes benchmarks/results/gpu_*.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY benchmarks/speed.py --device cuda --precision 32 --out benchmarks/results/gpu_fp32.json
$PY benchmarks/speed.py --device cuda --precision bf16 --compile --out benchmarks/results/gpu_bf16.json
# The teacher families at their real sizes (ADM-64, SD-1.5 and DiT-XL/2 at 256 px), fp32, batch 16.
$PY benchmarks/speed.py --device cuda --families adm64,sd15,dit-xl2 --family-batch 16 \
  --out benchmarks/results/gpu_families.json
gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  $PY benchmarks/ddp_throughput.py --devices 1 --out benchmarks/results/gpu_ddp1.json
  $PY benchmarks/ddp_throughput.py --devices 2 --out benchmarks/results/gpu_ddp2.json
else
  echo "one GPU: skipping the 1-GPU vs 2-process DDP line"
fi
