#!/bin/sh
# berth example `podman-split`, exec (root): `berth exec JOB CMD...` runs "$@" (WRAPPER
# CMD ARGS...) in the container that setup started, as the job's owner, in the job's
# directory, with a terminal when berth gives the hook one.
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
# berth exec -i: the user's input goes to the command; -t: it gets a terminal.
tty=
[ "${BERTH_EXEC_STDIN:-0}" = 1 ] && tty="--interactive"
[ "${BERTH_EXEC_TTY:-0}" = 1 ] && tty="$tty --tty"
# shellcheck disable=SC2086 # $tty is zero, one or two words
exec podman exec $tty --user "$BERTH_JOB_UID:$BERTH_JOB_GID" --env BERTH_VW_STATUS= \
    --env-file "$VOV_CONTAINER_ENV_FILE" --workdir "$jobdir" "$name" "$@"
