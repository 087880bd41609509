#!/usr/bin/env bash
# The DESIGN §6 benchmark in one device-machine call: build the compiled core (so the cuda
# provider exists), time host-side mask building, then run bench.run under a time limit.
# Everything lands under $OUT (at most 8 files come back from the device machine):
#   gpu.txt, masks.txt, run.log, run/results.csv, run/notes.csv, run/results.md, run/results.png
# Usage (from the repository root):
#   OUT=/tmp/out bash bench/gpu_bench.sh [WORKLOADS]          e.g. W1,W2 (default all)
# Environment: PROVIDERS (default cuda,triton,flex,sdpa,math-jvp), OPS (fwd,bwd,jvp,jvp_zt),
#   LIMIT_S (bench.run is stopped with SIGINT after this, keeping what it measured; 420),
#   BUILD=0 to skip the build, BENCH_ARGS for more bench.run options.
# A full W1-W8 suite with compiles can outrun one 10-minute call: run it in parts
# (W1,W2 / W3,W4,W8 / W5,W6,W7) and merge them with `python -m bench.report DIR... --out DIR`.
set -u
OUT=${OUT:-/tmp/jfa_bench}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JFA_GIT_SHA=${JFA_GIT_SHA:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv > "$OUT/gpu.txt" 2>&1

if [ "${BUILD:-1}" = 1 ]; then
  start=$(date +%s)
  JFA_CUDA_ARCHS=${JFA_CUDA_ARCHS:-90} timeout 300 python3 setup.py build_ext --inplace > /tmp/jfa_build.log 2>&1
  echo "build rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
  grep -E "error" /tmp/jfa_build.log | head -5
fi

python3 bench/bench_masks.py W1 W2 W3 W4 W5 W6 W7 W8 > "$OUT/masks.txt" 2>&1
echo "mask build (limit 5 ms, W5 unlimited): rc=$?"; grep median "$OUT/masks.txt"

timeout -s INT --kill-after=30 "${LIMIT_S:-420}" python3 -m bench.run --workloads "${1:-all}" \
  --providers "${PROVIDERS:-cuda,triton,flex,sdpa,math-jvp}" --ops "${OPS:-fwd,bwd,jvp,jvp_zt}" \
  --out "$OUT/run" ${BENCH_ARGS:-} > "$OUT/run.log" 2>&1
rc=$?
grep -E "^\[|^==|skip provider|measurements" "$OUT/run.log" | grep -v "check," | tail -60
echo "bench.run rc=$rc"
cat "$OUT/run/results.md" 2>/dev/null | head -80
exit $rc
