#!/usr/bin/env bash
# Run one long job on a lent GPU machine across several calls that are each limited in time:
#
#   bench/gpu_background.sh NAME WAIT_S -- COMMAND...
#
# The first call starts COMMAND in a session of its own (so it outlives the call) with its output in
# runs/bg/NAME/log; every call (the first too) then waits up to WAIT_S seconds for it to end and
# prints the log's tail. Exit status: COMMAND's own once it has ended, 75 while it still runs
# (call again, with the same arguments, before the machine goes idle).
set -uo pipefail
name=$1 wait_s=$2; shift 2
[ "${1:-}" = "--" ] && shift
dir=runs/bg/$name
mkdir -p "$dir"
if [ ! -e "$dir/pid" ]; then
    setsid bash -c 'echo $$ > "$0/pid"; "${@}" > "$0/log" 2>&1 < /dev/null; echo $? > "$0/rc"' "$dir" "$@" &
    sleep 2
    echo "started $name: $*"
fi
for ((i = 0; i < wait_s; i += 5)); do
    [ -e "$dir/rc" ] && break
    sleep 5
done
tail -c 4000 "$dir/log"
if [ -e "$dir/rc" ]; then
    echo "JOB $name DONE rc=$(cat "$dir/rc")"
    exit "$(cat "$dir/rc")"
fi
echo "JOB $name RUNNING ($(( $(date +%s) - $(stat -c %Y "$dir/pid") )) s so far)"
exit 75
