#!/bin/sh
# berth example `podman-split`, enter (root): run the job in the container that setup
# started, as the job's owner. "$@" is WRAPPER CMD ARGS....
#
# `podman exec` does not pass signals on to the process inside: when the job is stopped,
# this hook ends, and the teardown removes the container with everything in it.
set -eu

# --- site settings: edit them, then re-sign: berth container sign podman-split ---
CONTAINERS_CONF_FILE=
# ---------------------------------------------------------------------------------

if [ -n "$CONTAINERS_CONF_FILE" ]; then
    CONTAINERS_CONF=$CONTAINERS_CONF_FILE
    export CONTAINERS_CONF
fi

name="$VOV_PROJECT_NAME-$HOST-$VOV_CONTAINER_NAME-$VOV_JOBSLOT"
jobdir=${VOV_CONTAINER_JOB_RUNDIR:-$PWD}
# An interactive job (berth run -I): the hook's standard input is the job's terminal.
tty=
if [ -t 0 ]; then
    tty="--interactive --tty"
fi
# shellcheck disable=SC2086 # $tty is zero or two words
exec podman exec $tty --user "$BERTH_JOB_UID:$BERTH_JOB_GID" \
    --env-file "$VOV_CONTAINER_ENV_FILE" --workdir "$jobdir" "$name" "$@"
