#!/bin/sh
# berth example `podman-split`, cleanup (user): runs as the job's owner after the job,
# whatever happened to it. Removes the core files the job left in its directory.
set -eu
jobdir=${VOV_CONTAINER_JOB_RUNDIR:-$PWD}
for f in "$jobdir"/core "$jobdir"/core.[0-9]*; do
    if [ -f "$f" ]; then
        rm -f -- "$f"
        echo "removed $f"
    fi
done
echo "cleanup of job $VOV_JOBID done"
