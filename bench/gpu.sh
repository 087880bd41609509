#!/usr/bin/env bash
# The one script for the GPU host: build, tests, sanitizers, mask timing and the benchmark, each a
# step, everything written under $OUT (at most 8 files, 2 folders deep, come back from that host).
#
#   OUT=/tmp/out bash bench/gpu.sh [STEP ...]            default: env build tests masks bench
#
# Steps:
#   env        nvidia-smi and versions                                         -> env.txt
#   build      the compiled core for sm_90 (JFA_CUDA_ARCHS, JFA_CUDA_LINEINFO)  -> build.log
#   tests      the test suite on the GPU (TESTS: pytest arguments)              -> tests.log
#   sanitizer  compute-sanitizer memcheck, racecheck, synccheck on small cases -> sanitizer.log
#   masks      host-side mask + tile build timing, W1-W8 (fails over 5 ms)     -> masks.txt
#   bench      python -m bench.run (WORKLOADS, PROVIDERS, OPS, BENCH_ARGS)      -> bench/results.{csv,md,png}, notes.csv, bench.log
#   selftest   the wgmma verbs alone (csrc/tools/wgmma_selftest.cu)            -> selftest.log
#   ncu        hardware counters of one kernel (NCU_KERNEL: a regex on its name; NCU_BACKEND: cuda
#              or flex-flash) in one op (NCU_OP: fwd, bwd, jvp, jvp_hinted) of one workload (NCU_WORKLOAD): every section, and
#              the stall samples per instruction                  -> ncu.csv, ncu_stalls.txt, ncu.log
#
# FlashAttention-4 (providers flex-flash): `source .peers/fa4.sh install` first in the same command
# (its header says how the kit travels); without it those providers are skipped with the reason.
#
# A job longer than one call runs in the background across calls (same arguments each call, back
# to back, before the host goes idle); it exits 75 while the job runs:
#   bash bench/gpu.sh background NAME WAIT_S -- COMMAND...
set -u
OUT=${OUT:-/tmp/jfa_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JFA_GIT_SHA=${JFA_GIT_SHA:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}

background() {  # NAME WAIT_S -- COMMAND...: start once in a session of its own, then wait and tail
  local name=$1 wait_s=$2; shift 2; [ "${1:-}" = "--" ] && shift
  local dir=/tmp/jfa_bg/$name; mkdir -p "$dir"
  if [ ! -e "$dir/pid" ]; then
    setsid bash -c 'echo $$ > "$0/pid"; "${@}" > "$0/log" 2>&1 < /dev/null; echo $? > "$0/rc"' "$dir" "$@" &
    sleep 2; echo "started $name: $*"
  fi
  for ((i = 0; i < wait_s; i += 5)); do [ -e "$dir/rc" ] && break; sleep 5; done
  tail -c 3000 "$dir/log"
  if [ -e "$dir/rc" ]; then echo "JOB $name DONE rc=$(cat "$dir/rc")"; return "$(cat "$dir/rc")"; fi
  echo "JOB $name RUNNING ($(( $(date +%s) - $(stat -c %Y "$dir/pid") )) s so far)"; return 75
}

small_cases() {  # the small cases the sanitizers run: every op on three mask families
  cat > /tmp/jfa_small.py <<'PY'
import torch
from jvp_flash_attn import masks
from jvp_flash_attn.backends import get
be = get("cuda")
for mask, hq, hk, d, dv in ((masks.teacher_forcing(masks.FramePattern(37, 4, 2)), 2, 1, 64, 64),
                            (masks.block_causal(masks.FramePattern(50, 3)), 1, 1, 128, 128),
                            (masks.from_segments([20, 77], [60, 37], [[0, 1], [2, 2]]), 2, 2, 64, 128)):
    mk = lambda s, h, e: torch.randn(1, s, h, e, device="cuda", dtype=torch.bfloat16)
    q, k, v = mk(mask.sq, hq, d), mk(mask.sk, hk, d), mk(mask.sk, hk, dv)
    be.forward_jvp(q, k, v, torch.randn_like(q), torch.randn_like(k), torch.randn_like(v), mask, 0.1)
    o, lse = be.forward(q, k, v, mask, 0.1)
    for deterministic in (False, True):   # the fused backward, adding dQ as blocks arrive and in key-tile order
        be.backward(q, k, v, o, lse, torch.randn_like(o), mask, 0.1, deterministic=deterministic)
torch.cuda.synchronize(); print("small cases ran")
PY
}

[ "${1:-}" = background ] && { shift; background "$@"; exit $?; }
status=0
for step in ${*:-env build tests masks bench}; do
  start=$(date +%s)
  case $step in
  env)
    { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
      python3 -c "import flash_attn.cute, importlib.metadata as m; print('flash-attn-4', m.version('flash-attn-4'))" 2>/dev/null \
        || echo "flash-attn-4 not importable"
      echo "git $JFA_GIT_SHA"; } > "$OUT/env.txt" 2>&1
    cat "$OUT/env.txt"
    ;;
  build)
    JFA_CUDA_ARCHS=${JFA_CUDA_ARCHS:-90} timeout 400 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1
    rc=$?; grep -E "error" "$OUT/build.log" | head -10
    ;;
  tests)
    timeout ${TEST_TIMEOUT:-420} python3 -m pytest -q -rs -p no:cacheprovider ${TESTS:-tests --ignore-glob=tests/test_rcm_*} \
      > "$OUT/tests.log" 2>&1
    rc=$?; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -15
    ;;
  sanitizer)
    small_cases; : > "$OUT/sanitizer.log"; rc=0
    for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck}; do
      timeout 100 compute-sanitizer --tool "$tool" --kernel-name kns=attention --print-limit 20 python3 /tmp/jfa_small.py \
        > /tmp/jfa_san.log 2>&1; r=$?; [ $r = 0 ] || rc=$r
      { echo "== $tool rc=$r"; grep -v "^=========     at \|^=========  *$" /tmp/jfa_san.log | head -40; tail -3 /tmp/jfa_san.log; } \
        >> "$OUT/sanitizer.log"; tail -3 /tmp/jfa_san.log
    done
    ;;
  masks)
    python3 bench/bench_masks.py W1 W2 W3 W4 W5 W6 W7 W8 > "$OUT/masks.txt" 2>&1
    rc=$?; grep median "$OUT/masks.txt"
    ;;
  bench)
    timeout -s INT --kill-after=30 "${LIMIT_S:-3000}" python3 -m bench.run --workloads "${WORKLOADS:-all}" \
      --providers "${PROVIDERS:-cuda,triton,flex,flex-flash,cudnn}" --ops "${OPS:-fwd,bwd,jvp,jvp_hinted}" \
      --out "$OUT/bench" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
    rc=$?; grep -E "^\[|^==|skip provider|measurements" "$OUT/bench.log" | grep -v "check," | tail -40
    ;;
  ncu)
    # one kernel of one op (NCU_BACKEND: cuda, or flex-flash for FlashAttention-4's): every section,
    # and where its warps wait, instruction by instruction (bench/ncu_stalls.py)
    timeout "${NCU_TIMEOUT:-300}" ncu --clock-control none --target-processes all \
      --kernel-name "regex:${NCU_KERNEL:-bwd_kernel_sm90_warp_specialised}" --launch-skip "${NCU_SKIP:-1}" \
      --launch-count "${NCU_COUNT:-1}" --set full --import-source yes -o /tmp/jfa_ncu -f \
      python3 bench/profile_kernels.py "${NCU_WORKLOAD:-W3}" "${NCU_OP:-bwd}" --backends "${NCU_BACKEND:-cuda}" --calls 2 \
      > "$OUT/ncu.log" 2>&1
    rc=$?
    ncu --import /tmp/jfa_ncu.ncu-rep --page details --csv > "$OUT/ncu.csv" 2>> "$OUT/ncu.log"
    ncu --import /tmp/jfa_ncu.ncu-rep --page source --csv --print-source sass > /tmp/jfa_ncu_sass.csv 2>> "$OUT/ncu.log"
    python3 bench/ncu_stalls.py /tmp/jfa_ncu_sass.csv --top 40 > "$OUT/ncu_stalls.txt" 2>> "$OUT/ncu.log"
    grep -E "Duration|Compute \(SM\) Throughput|Issue Slots Busy|No Eligible|Executed Instructions\"|Registers Per" "$OUT/ncu.csv" \
      | cut -d, -f12- | head -30
    head -20 "$OUT/ncu_stalls.txt"
    ;;
  selftest)
    nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I csrc csrc/tools/wgmma_selftest.cu -o /tmp/wgmma_selftest \
      > "$OUT/selftest.log" 2>&1 && /tmp/wgmma_selftest >> "$OUT/selftest.log" 2>&1
    rc=$?; tail -4 "$OUT/selftest.log"
    ;;
  *) echo "unknown step $step (env build tests sanitizer masks bench selftest ncu, or background)"; exit 2 ;;
  esac
  [ "$step" = env ] && rc=0
  echo "== $step rc=$rc in $(( $(date +%s) - start )) s"
  [ "$rc" = 0 ] || status=$rc
done
exit $status
