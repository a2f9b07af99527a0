#!/bin/sh
# berth example `podman-split`, teardown (root): remove the job's container, and with it
# every process still running inside (a stopped job's command among them).
set -eu

# --- site settings: edit them, then re-sign: berth container sign podman-split ---
CONTAINERS_CONF_FILE=
# ---------------------------------------------------------------------------------

if [ -n "$CONTAINERS_CONF_FILE" ]; then
    CONTAINERS_CONF=$CONTAINERS_CONF_FILE
    export CONTAINERS_CONF
fi

name="$VOV_PROJECT_NAME-$HOST-$VOV_CONTAINER_NAME-$VOV_JOBSLOT"
podman rm --force --time 0 "$name" >/dev/null 2>&1 || true
if podman container exists "$name"; then
    echo "container $name is still there" >&2
    exit 1
fi
echo "container $name removed"
