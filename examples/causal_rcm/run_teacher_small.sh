#!/usr/bin/env bash
# Train the small causal chunk-wise teacher (teacher forcing, 3 frames per chunk), sample
# it with the streaming KV-cache sampler, and score the samples against real data
# (physics error, condition adherence, drift, Fréchet distance) by frame index.
#
#   examples/causal_rcm/run_teacher_small.sh [results_dir]        # one H200: training stops at 9 minutes
#   PRESET=tiny examples/causal_rcm/run_teacher_small.sh /tmp/x   # the same pipeline as a CPU dry run
#   RCM_OVERRIDES="train.steps=100 sample.cfg_scale=3" examples/causal_rcm/run_teacher_small.sh   # extra config overrides
#
# Checkpoints and samples go to $WORK (default $TMPDIR/causal_rcm_teacher_small_<preset>, outside
# the repository, as checkpoints are large); the results
# (JSON, markdown, per-frame plot, loss curve, GIF/PNG filmstrips) are copied to results_dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${1:-bench/results/teacher_causal_chunkwise_small}
PRESET=${PRESET:-small}
WORK=${WORK:-${TMPDIR:-/tmp}/causal_rcm_teacher_small_${PRESET}}
PY=${PY:-python3}
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import numpy, tqdm, matplotlib, PIL" 2>/dev/null || {
    echo "needs numpy, tqdm, matplotlib and pillow importable by $PY (carry their wheels)" >&2; exit 1; }

read -r -a EXTRA <<< "${RCM_OVERRIDES:-}"
run() { "$PY" -m causal_rcm_min.train --preset "$PRESET" --out "$WORK" "$@" ${EXTRA[@]+"${EXTRA[@]}"}; }
start=$(date +%s)
run --stage teacher_causal model.frames_per_chunk=3
run --stage encoder
run --stage sample sample.teacher=teacher_causal
run --stage evaluate sample.teacher=teacher_causal

mkdir -p "$RESULTS"
src="$WORK/teacher_causal"
cp "$src/results.json" "$src/results.md" "$src/by_frame.png" "$src/loss.png" "$src/train_metrics.json" "$RESULTS/"
for f in generated real; do cp "$src/samples/$f.png" "$src/samples/$f.gif" "$RESULTS/"; done
"$PY" -m bench.machine "$RESULTS/machine.json" total_seconds="$(( $(date +%s) - start ))"
echo "results in $RESULTS ($(( $(date +%s) - start )) s)"
