#!/usr/bin/env bash
# Toy-scale reproduction of Causal-rCM's claims (python/causal_rcm_min/repro.py): teacher vs
# SF-DMD students initialised from {teacher, TF-KD, TF-dCM, TF-sCM} at 1/2/4 steps, frame-wise
# and chunk-wise, scored with evaluate.py; TF-sCM vs TF-dCM convergence curves; the step time
# TF-sCM saves by reusing the JVP pass's primal for the gradient.
#
#   examples/causal_rcm/run_rcm_repro.sh [results_dir]                  # one H200, < 25 min in all
#   BUDGET_S=500 examples/causal_rcm/run_rcm_repro.sh                   # stop starting stages after 500 s; rerun to go on
#   PRESET=tiny OMP_NUM_THREADS=1 examples/causal_rcm/run_rcm_repro.sh /tmp/rcm_tiny     # CPU dry run end to end (~1 min on 2 cores)
#   PRESET=smoke OMP_NUM_THREADS=1 examples/causal_rcm/run_rcm_repro.sh /tmp/rcm_smoke   # every stage at its smallest, as the test runs it (~30 s)
#     (one thread per process on a CPU: the two layouts run side by side, and with torch's default
#     threads they wait on each other's cores, 3x slower on 2 cores)
#   TEACHER_CKPT=path/ckpt.pt examples/causal_rcm/run_rcm_repro.sh      # reuse a trained chunk-wise teacher_causal
#   LAYOUTS=chunkwise examples/causal_rcm/run_rcm_repro.sh              # one layout only
#   PARALLEL=0 examples/causal_rcm/run_rcm_repro.sh                     # layouts one after the other
#
# By default the two layouts train as two processes side by side on the one GPU. The teachers'
# steps are GPU-bound and share it (each gets half), but the later stages (SF-DMD rollouts,
# sampling) are bound by kernel launches and overlap: on an H200 the stages add up to 39 min and
# the pair takes 22 (bench/results/rcm_repro_small_2026-11-21). Step times (the convergence
# curves' seconds) are measured under that sharing, the same for TF-sCM and TF-dCM.
#   PRESET=gpu_check KEEP_GOING=1 LAYOUTS=chunkwise BUDGET_S=400 examples/causal_rcm/run_rcm_repro.sh   # one-piece GPU check
#
# Work (checkpoints, markers of finished stages) stays in $WORK (default runs/rcm_repro_<preset>,
# ignored by git): a rerun skips every finished stage, so the run can be split into pieces.
set -euo pipefail
cd "$(dirname "$0")/../.."
PRESET=${PRESET:-small}
RESULTS=${1:-bench/results/rcm_repro_${PRESET}}
WORK=${WORK:-runs/rcm_repro_${PRESET}}
BUDGET_S=${BUDGET_S:-0}
PY=${PY:-python3}
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import numpy, tqdm, matplotlib, PIL" 2>/dev/null || {
    echo "needs numpy, tqdm, matplotlib and pillow importable by $PY" >&2; exit 1; }
args=(--preset "$PRESET" --work "$WORK" --results "$RESULTS" --budget-s "$BUDGET_S")
if [ -n "${TEACHER_CKPT:-}" ]; then args+=(--teacher-ckpt "$TEACHER_CKPT"); fi
if [ -n "${LAYOUTS:-}" ]; then args+=(--layouts "$LAYOUTS"); fi
if [ -n "${KEEP_GOING:-}" ]; then args+=(--keep-going); fi
start=$(date +%s)
if [ "${PARALLEL:-1}" = 1 ] && [ -z "${LAYOUTS:-}" ]; then
    mkdir -p "$WORK"
    "$PY" -m causal_rcm_min.repro "${args[@]}" --layouts chunkwise > "$WORK/chunkwise.log" 2>&1 &
    pid_c=$!
    "$PY" -m causal_rcm_min.repro "${args[@]}" --layouts framewise --no-timing > "$WORK/framewise.log" 2>&1 &
    pid_f=$!
    tail -n +1 -f "$WORK/chunkwise.log" "$WORK/framewise.log" &
    pid_t=$!
    rc=0; wait "$pid_c" || rc=$?; wait "$pid_f" || rc=$?
    sleep 1; kill "$pid_t" 2>/dev/null || true
    [ "$rc" = 0 ] || { echo "a layout failed (logs in $WORK/*.log)" >&2; exit "$rc"; }
    "$PY" -m causal_rcm_min.repro "${args[@]}"   # every stage is done: only the joint report
else
    "$PY" -m causal_rcm_min.repro "${args[@]}"
fi
"$PY" -m bench.machine "$RESULTS/machine.json" this_piece_seconds="$(( $(date +%s) - start ))" jfa_backend="${JFA_BACKEND:-auto}"
echo "results in $RESULTS ($(( $(date +%s) - start )) s this piece)"
