#!/usr/bin/env bash
# One device-machine call for the compiled core: build (sm_90), GPU tests, compute-sanitizer,
# and a quick timing of fwd / fused JVP / bwd on W1-W4 against FlexAttention.
# Writes everything under $OUT (build.log, tests.log, sanitizer.log, timing.csv, timing.log).
#   OUT=/tmp/out bash bench/cuda_gpu_check.sh [build|tests|sanitizer|timing ...]   (default: all)
set -u
OUT=${OUT:-/tmp/jfa_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/python:$PWD/tests PYTHONUNBUFFERED=1
STEPS=${*:-build tests sanitizer timing}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1

for step in $STEPS; do
case $step in
build)
  start=$(date +%s)
  JFA_CUDA_ARCHS=${JFA_CUDA_ARCHS:-90} JFA_CUDA_LINEINFO=1 timeout 300 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  echo "build rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
  grep -E "error" "$OUT/build.log" | head -20
  ;;
tests)
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -x -q -rs tests/test_cuda_build.py tests/test_cuda_kernels.py -s -p no:cacheprovider \
     > "$OUT/tests.log" 2>&1; echo "tests rc=$?"; grep -E "passed|failed|Error|assert" "$OUT/tests.log" | tail -15
  timeout ${SHARED_TIMEOUT:-120} python3 -m pytest -q -k "cuda" tests/test_backends.py -p no:cacheprovider \
     > "$OUT/tests_shared.log" 2>&1; echo "shared suite rc=$?"; tail -3 "$OUT/tests_shared.log"
  ;;
sanitizer)
  cat > /tmp/jfa_small.py <<'PY'
import torch, jvp_flash_attn as jfa
from jvp_flash_attn import masks
from jvp_flash_attn.backends import get
be = get("cuda")
for mask, hq, hk, d, dv in ((masks.teacher_forcing(masks.FramePattern(37, 4, 2)), 2, 1, 64, 64),
                            (masks.block_causal(masks.FramePattern(50, 3)), 1, 1, 128, 128),
                            (masks.from_segments([20, 77], [60, 37], [[0, 1], [2, 2]]), 2, 2, 64, 128)):
    mk = lambda s, h, e: torch.randn(1, s, h, e, device="cuda", dtype=torch.bfloat16)
    q, k, v = mk(mask.sq, hq, d), mk(mask.sk, hk, d), mk(mask.sk, hk, dv)
    o, to, lse = be.forward_jvp(q, k, v, torch.randn_like(q), torch.randn_like(k), torch.randn_like(v), mask, 0.1)
    o, lse = be.forward(q, k, v, mask, 0.1)
    if d == dv:
        be.backward(q, k, v, o, lse, torch.randn_like(o), mask, 0.1)
torch.cuda.synchronize(); print("small cases ran")
PY
  for tool in memcheck racecheck; do
    timeout 150 compute-sanitizer --tool $tool --kernel-name regex:attention --print-limit 20 python3 /tmp/jfa_small.py \
      > "$OUT/sanitizer_$tool.log" 2>&1; echo "sanitizer $tool rc=$?"; tail -3 "$OUT/sanitizer_$tool.log"
  done
  ;;
timing)
  timeout ${TIMING_TIMEOUT:-240} python3 - > "$OUT/timing.log" 2>&1 <<'PY'
import csv, os, time, torch
import triton.testing as tt
import jvp_flash_attn as jfa
from jvp_flash_attn import masks, reference
from jvp_flash_attn.backends import get
from jvp_flash_attn.masks import FramePattern
OUT = os.environ["OUT"]
W = {"W1": masks.teacher_forcing(FramePattern(1560, 21)), "W2": masks.teacher_forcing(FramePattern(1560, 21, 3)),
     "W3": masks.block_causal(FramePattern(1560, 21)), "W4": masks.block_causal(FramePattern(1560, 21, 3))}
H, D = 12, 128
be = get("cuda")
rows = []
def record(op, prov, w, ms, fl):
    rows.append(dict(op=op, provider=prov, workload=w, ms=round(ms, 4), tflops=round(fl / ms / 1e9, 1)))
    print(rows[-1], flush=True)
for w, mask in W.items():
    mk = lambda: torch.randn(1, mask.sq, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v, tq, tk, tv, do = (mk() for _ in range(7))
    o, lse = be.forward(q, k, v, mask, D ** -0.5)
    record("fwd", "cuda", w, tt.do_bench(lambda: be.forward(q, k, v, mask, D ** -0.5), warmup=50, rep=300), reference.flops(mask, 1, H, D, D, "fwd"))
    record("jvp", "cuda", w, tt.do_bench(lambda: be.forward_jvp(q, k, v, tq, tk, tv, mask, D ** -0.5), warmup=50, rep=300), reference.flops(mask, 1, H, D, D, "jvp"))
    record("bwd", "cuda", w, tt.do_bench(lambda: be.backward(q, k, v, o, lse, do, mask, D ** -0.5), warmup=50, rep=300), reference.flops(mask, 1, H, D, D, "bwd"))
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention)
    for w, mask in W.items():
        q_seg, q_pos, k_seg, k_pos, rule = mask.token_maps("cuda")
        def mm(b, h, qi, ki):
            r = rule[q_seg[qi], k_seg[ki]]
            return (r == 1) | ((r == 2) & (q_pos[qi] >= k_pos[ki]))
        bm = create_block_mask(mm, None, None, mask.sq, mask.sk, device="cuda")
        mk = lambda: torch.randn(1, H, mask.sq, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        q, k, v = mk(), mk(), mk()
        record("fwd", "flex", w, tt.do_bench(lambda: flex(q, k, v, block_mask=bm), warmup=50, rep=300), reference.flops(mask, 1, H, D, D, "fwd"))
        out = flex(q, k, v, block_mask=bm); g = torch.randn_like(out)
        record("bwd", "flex", w, tt.do_bench(lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True), warmup=50, rep=300), reference.flops(mask, 1, H, D, D, "bwd"))
except Exception as e:
    print("flex failed:", repr(e)[:500])
with open(os.path.join(OUT, "timing.csv"), "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=list(rows[0])); wr.writeheader(); wr.writerows(rows)
PY
  echo "timing rc=$?"; grep -E "^\{|failed" "$OUT/timing.log"
  ;;
esac
done
