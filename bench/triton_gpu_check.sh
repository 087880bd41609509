#!/usr/bin/env bash
# One device-machine call: GPU correctness of the Triton backend (small shapes and the full
# W1-W8 structures), then timings against FlexAttention. Everything lands under $OUT.
# Usage (device machine, repo root): bash bench/triton_gpu_check.sh [workloads] [sweep-workload]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=python TRITON_DEFAULT_FP_FUSION=1
WL=${1:-W1,W2,W3,W4}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
timeout 240 python -m pytest -q -x -p no:cacheprovider tests/test_triton_kernels.py 2>&1 | tail -5 | tee "$OUT/pytest_small.log"
timeout 300 python -m pytest -q -p no:cacheprovider -m gpu tests/test_backends.py -k triton 2>&1 | tail -8 | tee "$OUT/pytest_gpu.log"
if [ -n "${2:-}" ]; then timeout 240 python bench/triton_gpu_bench.py --sweep "$2" 2>&1 | tee "$OUT/sweep.log"; fi
timeout 400 python bench/triton_gpu_bench.py --workloads "$WL" --out "$OUT/triton_bench.csv" 2>&1 | tee "$OUT/bench.log"
