#!/bin/sh
# berth example `bwrap`, exec (user): `berth exec JOB CMD...` runs "$@" (WRAPPER CMD
# ARGS...) inside the job's sandbox: nsenter joins the namespaces of the sandbox's first
# process, the child of the bwrap that the enter hook became (BERTH_ENTER_PID).
set -eu

jobdir=${VOV_CONTAINER_JOB_RUNDIR:-$PWD}
read -r sandbox _ <"/proc/$BERTH_ENTER_PID/task/$BERTH_ENTER_PID/children" || {
    echo "bwrap-exec: the job's sandbox (a child of process $BERTH_ENTER_PID) is gone" >&2
    exit 1
}
exec nsenter --target "$sandbox" --user --mount --pid --ipc --uts \
    --preserve-credentials --wd="$jobdir" "$@"
