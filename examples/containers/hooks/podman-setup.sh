#!/bin/sh
# berth example `podman-split`, setup (root): create and start the job's container, which
# idles until the enter hook places the job in it and the teardown removes it.
set -eu

# --- site settings: edit them, then re-sign: berth container sign podman-split ---
IMAGE=busybox:latest
CONTAINERS_CONF_FILE=
# ---------------------------------------------------------------------------------

if [ -n "$CONTAINERS_CONF_FILE" ]; then
    CONTAINERS_CONF=$CONTAINERS_CONF_FILE
    export CONTAINERS_CONF
fi

name="$VOV_PROJECT_NAME-$HOST-$VOV_CONTAINER_NAME-$VOV_JOBSLOT"
jobdir=${VOV_CONTAINER_JOB_RUNDIR:-$PWD}
vwdir=${BERTH_VW%/*}

# A container left by a tasker that died before its teardown must not block this job.
podman rm --force --time 0 "$name" >/dev/null 2>&1 || true

set -- run --detach --name "$name" --label "berth.job=$VOV_JOBID" \
    --volume "$jobdir:$jobdir" --volume "$vwdir:$vwdir:ro" \
    --cpus "$VOV_CONTAINER_CORES"
if [ -n "${VOV_CONTAINER_RAM:-}" ]; then
    set -- "$@" --memory "${VOV_CONTAINER_RAM}m" --memory-swap "${VOV_CONTAINER_RAM}m"
fi
if [ -n "${VOV_CONTAINER_TMP:-}" ]; then
    set -- "$@" --tmpfs "/tmp:rw,nosuid,nodev,size=${VOV_CONTAINER_TMP}m"
fi
podman "$@" "$IMAGE" sleep 2147483647 >/dev/null
echo "container $name started"
