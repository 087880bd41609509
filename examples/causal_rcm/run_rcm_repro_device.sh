#!/usr/bin/env bash
# The toy reproduction on a lent GPU machine, whose calls last at most 10 minutes: the same
# command, repeated back to back, starts `examples/causal_rcm/run_rcm_repro.sh` in the background on the first
# call and waits on later ones (bench/gpu.sh background). Every call packs what exists so far
# (the table once a layout has finished, logs, stage markers) into $OUT/rcm_results.tgz, so a
# machine taken back mid-run still leaves its finished half behind.
#
#   JFA_GIT_SHA=... bash examples/causal_rcm/run_rcm_repro_device.sh      # exit 75 while it runs: call again
#
# Start it on a fresh machine: the whole run takes about 22 min (both layouts side by side, the
# frame-wise one the longer), and a machine goes back 30 min after it was started.
set -u
export PYTHONUNBUFFERED=1
bash bench/gpu.sh background repro "${WAIT_S:-540}" -- bash examples/causal_rcm/run_rcm_repro.sh runs/rcm_results
rc=$?
files=()
for f in runs/rcm_results runs/rcm_repro_small/chunkwise.log runs/rcm_repro_small/framewise.log \
         runs/rcm_repro_small/.done /tmp/jfa_bg/repro/log; do
    [ -e "$f" ] && files+=("$f")
done
[ -n "${OUT:-}" ] && [ ${#files[@]} -gt 0 ] && tar czf "$OUT/rcm_results.tgz" "${files[@]}"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
exit $rc
