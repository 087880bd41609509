#!/usr/bin/env bash
# One device-machine call for the compiled core: build (sm_90), GPU tests, compute-sanitizer,
# and a quick timing of fwd / fused JVP / bwd on W1-W4 against FlexAttention.
# Writes everything under $OUT (selftest.log, build.log, tests.log, sanitizer.log, timing.csv, timing.log).
#   OUT=/tmp/out bash bench/cuda_gpu_check.sh [selftest|build|tests|sanitizer|timing ...]   (default: all)
# JFA_CUDA_SM90=0 times the portable mma.sync kernels instead of the sm_90a path (TIMING_TAG names the rows).
set -u
OUT=${OUT:-/tmp/jfa_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/python:$PWD/tests PYTHONUNBUFFERED=1
STEPS=${*:-selftest build tests sanitizer timing}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1

for step in $STEPS; do
case $step in
selftest)
  # The wgmma verbs alone (csrc/tools/wgmma_selftest.cu): descriptors, swizzle, fragment order.
  nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I csrc csrc/tools/wgmma_selftest.cu -o /tmp/wgmma_selftest \
    > "$OUT/selftest.log" 2>&1 && /tmp/wgmma_selftest >> "$OUT/selftest.log" 2>&1
  echo "selftest rc=$?"; cat "$OUT/selftest.log" | tail -4
  ;;
build)
  start=$(date +%s)
  JFA_CUDA_ARCHS=${JFA_CUDA_ARCHS:-90} JFA_CUDA_LINEINFO=1 timeout 300 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  echo "build rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
  grep -E "error" "$OUT/build.log" | head -20
  ;;
tests)
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest --maxfail=10 -q -rs tests/test_cuda_build.py tests/test_cuda_kernels.py -s -p no:cacheprovider \
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
  for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck}; do
    timeout 150 compute-sanitizer --tool $tool --kernel-name kns=attention --print-limit 20 python3 /tmp/jfa_small.py \
      > "$OUT/sanitizer_$tool.log" 2>&1; echo "sanitizer $tool rc=$?"; tail -3 "$OUT/sanitizer_$tool.log"
  done
  ;;
timing|variants)
  cat > /tmp/jfa_timing.py <<'PY'
# Times the cuda backend (and FlexAttention when TIMING_FLEX=1) with CUDA events
# (triton.testing.do_bench, median after warm-up); FLOPs count exact allowed pairs (DESIGN §6).
import csv, os, torch
import triton.testing as tt
from jvp_flash_attn import masks, reference
from jvp_flash_attn.backends import get, cuda_backend
from jvp_flash_attn.masks import FramePattern
OUT, TAG = os.environ["OUT"], os.environ.get("TIMING_TAG", "default")
ALL = {"W1": lambda: masks.teacher_forcing(FramePattern(1560, 21)), "W2": lambda: masks.teacher_forcing(FramePattern(1560, 21, 3)),
       "W3": lambda: masks.block_causal(FramePattern(1560, 21)), "W4": lambda: masks.block_causal(FramePattern(1560, 21, 3))}
W = {w: ALL[w]() for w in os.environ.get("TIMING_WORKLOADS", "W1 W2 W3 W4").split()}
H, D = 12, 128
be = get("cuda")
print("tiles", TAG, cuda_backend.load_module().tile_shapes(0))
path = os.path.join(OUT, "timing.csv"); new = not os.path.exists(path)
f = open(path, "a", newline=""); wr = csv.writer(f)
if new: wr.writerow(["op", "provider", "variant", "workload", "ms_p50", "tflops"])
def record(op, prov, w, fn, fl):
    ms = tt.do_bench(fn, warmup=50, rep=300, return_mode="median")
    wr.writerow([op, prov, TAG, w, f"{ms:.4f}", f"{fl / ms / 1e9:.1f}"]); f.flush()
    print(f"{op:4s} {prov:5s} {TAG:10s} {w} {ms:8.3f} ms {fl / ms / 1e9:6.1f} TFLOP/s", flush=True)
for w, mask in W.items():
    mk = lambda: torch.randn(1, mask.sq, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v, tq, tk, tv, do = (mk() for _ in range(7))
    o, lse = be.forward(q, k, v, mask, D ** -0.5)
    fl = lambda op: reference.flops(mask, 1, H, D, D, op)
    record("fwd", "cuda", w, lambda: be.forward(q, k, v, mask, D ** -0.5), fl("fwd"))
    record("jvp", "cuda", w, lambda: be.forward_jvp(q, k, v, tq, tk, tv, mask, D ** -0.5), fl("jvp"))
    record("bwd", "cuda", w, lambda: be.backward(q, k, v, o, lse, do, mask, D ** -0.5), fl("bwd"))
if os.environ.get("TIMING_FLEX") == "1":
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
        fl = lambda op: reference.flops(mask, 1, H, D, D, op)
        record("fwd", "flex", w, lambda: flex(q, k, v, block_mask=bm), fl("fwd"))
        g = torch.randn(1, H, mask.sq, D, device="cuda", dtype=torch.bfloat16)
        def fwd_bwd():
            out = flex(q, k, v, block_mask=bm)
            return torch.autograd.grad(out, (q, k, v), g)
        ms_fb = tt.do_bench(fwd_bwd, warmup=50, rep=300, return_mode="median")
        ms_f = tt.do_bench(lambda: flex(q, k, v, block_mask=bm), warmup=50, rep=300, return_mode="median")
        ms = ms_fb - ms_f  # backward alone = (forward + backward) - forward
        wr.writerow(["bwd", "flex", TAG, w, f"{ms:.4f}", f"{fl('bwd') / ms / 1e9:.1f}"]); f.flush()
        print(f"bwd  flex  {TAG:10s} {w} {ms:8.3f} ms {fl('bwd') / ms / 1e9:6.1f} TFLOP/s (fwd+bwd minus fwd)", flush=True)
PY
  if [ "$step" = timing ]; then
    TIMING_FLEX=${TIMING_FLEX:-1} timeout ${TIMING_TIMEOUT:-240} python3 /tmp/jfa_timing.py 2>&1 | tee -a "$OUT/timing.log" | grep -E "TFLOP|Error"
  else
    # Tile-shape alternatives (JFA_TILES, see csrc/build_ext.py): rebuild (bf16 d128 only), time W3/W4.
    for spec in ${VARIANTS:-"base:"}; do
      tag=${spec%%:*}; tiles=${spec#*:}
      JFA_TILES="$tiles" JFA_CUDA_ARCHS=90 JFA_CUDA_VARIANTS=ci timeout 120 python3 setup.py build_ext --inplace --force >> "$OUT/build.log" 2>&1 || { echo "build $tag failed"; continue; }
      TIMING_TAG=$tag TIMING_WORKLOADS="${TIMING_WORKLOADS:-W3 W4}" timeout 120 python3 /tmp/jfa_timing.py 2>&1 | tee -a "$OUT/timing.log" | grep -E "TFLOP|Error"
    done
  fi
  ;;
esac
done
