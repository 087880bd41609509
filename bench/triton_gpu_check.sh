#!/usr/bin/env bash
# Device-machine runs of the Triton backend; everything lands under $OUT.
#   bash bench/triton_gpu_check.sh check [sweep-workload]   # GPU tests (small + W1-W8), config sweep
#   bash bench/triton_gpu_check.sh bench [workloads]        # timings vs FlexAttention
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=python TRITON_DEFAULT_FP_FUSION=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
case "${1:-check}" in
  check)
    timeout 150 python -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py > "$OUT/pytest_small.log" 2>&1
    grep -E "^E  |passed|failed" "$OUT/pytest_small.log" | head -20
    if [ -n "${2:-}" ]; then timeout 200 python bench/triton_gpu_bench.py --sweep "$2" 2>&1 | tee "$OUT/sweep.log"; fi
    timeout 220 python -m pytest -q -p no:cacheprovider -m gpu tests/test_backends.py -k triton 2>&1 | tail -8 | tee "$OUT/pytest_gpu.log"
    ;;
  bench)
    timeout 100 python -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "D32x16" > "$OUT/pytest_small.log" 2>&1
    grep -E "^E  |passed|failed" "$OUT/pytest_small.log" | head -20
    timeout 560 python bench/triton_gpu_bench.py --workloads "${2:-W1,W2,W3,W4}" --out "$OUT/triton_bench.csv" 2>&1 | tee "$OUT/bench.log"
    ;;
esac
