#!/bin/sh
# berth example `bwrap`, exec (user): `berth exec JOB CMD...` runs "$@" (WRAPPER CMD
# ARGS...) inside the job's sandbox. The sandbox's first process is the child of the
# bwrap that the enter hook became (BERTH_ENTER_PID); berth's wrapper joins its
# namespaces (`berth-vw --enter`: bubblewrap's belong to the parent of the user namespace
# its process is in, which nsenter cannot enter in that order).
set -eu

jobdir=${VOV_CONTAINER_JOB_RUNDIR:-$PWD}
sandbox=$(cut -d' ' -f1 "/proc/$BERTH_ENTER_PID/task/$BERTH_ENTER_PID/children" 2>/dev/null || true)
if [ -z "$sandbox" ]; then
    echo "bwrap-exec: the job's sandbox (a child of process $BERTH_ENTER_PID) is gone" >&2
    exit 1
fi
# The job's limit (as the enter hook sets it).
if [ -n "${VOV_CONTAINER_RAM:-}" ]; then
    ulimit -v $((VOV_CONTAINER_RAM * 1024))
fi
# Without berth exec -i or -t, the command reads an end of file, not the terminal.
if [ "${BERTH_EXEC_STDIN:-0}" != 1 ] && [ "${BERTH_EXEC_TTY:-0}" != 1 ]; then
    exec </dev/null
fi
exec "$BERTH_VW" --enter "$sandbox" "$jobdir" "$@"
