#!/usr/bin/env bash
# Two GPUs of one host, one command: the context-parallel tests (gloo, on the CPU), then W1 on
# one GPU against Ulysses context parallelism over both (examples/context_parallel_bench.py).
#   OUT=/tmp/out bash examples/gpu_two.sh
# Writes to $OUT: env.txt (GPU, versions, topology, backends), build.log, pytest_distributed.log, cp.log, cp/context_parallel.csv and .md.
# BUILD=0 skips building the compiled core.
set -u
OUT=${OUT:-/tmp/jfa_cp}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off
OUT="$OUT" bash bench/gpu.sh env $([ "${BUILD:-1}" = 1 ] && echo build)   # env.txt, build.log
{ nvidia-smi topo -m; python3 -m jvp_flash_attn; } >> "$OUT/env.txt" 2>&1

timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py > "$OUT/pytest_distributed.log" 2>&1
echo "distributed tests rc=$?"; tail -2 "$OUT/pytest_distributed.log"

timeout 400 torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29512 \
  examples/context_parallel_bench.py --out "$OUT/cp" > "$OUT/cp.log" 2>&1
echo "context_parallel_bench rc=$?"
cat "$OUT/cp/context_parallel.md" 2>/dev/null || tail -30 "$OUT/cp.log"
