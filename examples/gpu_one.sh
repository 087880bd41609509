#!/usr/bin/env bash
# One H200, one command: the diffusers adapter's bf16 GPU test, then the Wan-scale TF-sCM step
# (examples/wan_scm_step.py) for 3 and 30 layers at 65,520 tokens, both recipes, with and
# without the zero-tangent hint. Run from the repository root, with .whl/ sent along when the
# machine has no diffusers (bash examples/diffusers_wheels.sh download makes it):
#   OUT=/tmp/out bash examples/gpu_one.sh [all|test|wan3|wan30]   (parts, when one call is short of time)
# Writes to $OUT: env.txt (GPU, versions, backends), build.log, pytest_diffusers.log, wan_scm_step.csv and
# wan_scm_step.log (one line per run: ms per part of the step, peak GiB).
# BUILD=0 skips building the compiled core (the cuda backend; triton is used without it).
set -u
OUT=${OUT:-/tmp/jfa_examples}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
bash examples/diffusers_wheels.sh install || { echo "diffusers is missing and .whl/ did not provide it"; exit 3; }
OUT="$OUT" bash bench/gpu.sh env $([ "${BUILD:-1}" = 1 ] && echo build)   # env.txt, build.log
python3 -m jvp_flash_attn >> "$OUT/env.txt" 2>&1

part=${1:-all} status=0
if [ "$part" = all ] || [ "$part" = test ]; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_integration_diffusers.py \
    > "$OUT/pytest_diffusers.log" 2>&1 || status=1
  echo "diffusers GPU test: $(tail -1 "$OUT/pytest_diffusers.log")"
fi
runs=()
if [ "$part" = all ] || [ "$part" = wan3 ]; then
  runs+=("--layers 3 --recipe fused" "--layers 3 --recipe fused --zero-tangent-hint"
         "--layers 3" "--layers 3 --zero-tangent-hint")
fi
if [ "$part" = all ] || [ "$part" = wan30 ]; then
  runs+=("--layers 30" "--layers 30 --zero-tangent-hint" "--layers 30 --recipe fused --steps 1 --warmup 0")
fi
for run in "${runs[@]}"; do
  echo "== wan_scm_step $run" >> "$OUT/wan_scm_step.log"
  timeout 240 python3 examples/wan_scm_step.py $run --out "$OUT" >> "$OUT/wan_scm_step.log" 2>&1
  rc=$?; [ $rc = 0 ] || status=1
  echo "rc=$rc" >> "$OUT/wan_scm_step.log"
done
[ ${#runs[@]} -eq 0 ] || grep -E "^==|^preset|rc=|Error" "$OUT/wan_scm_step.log"
exit $status
