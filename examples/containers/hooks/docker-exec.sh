#!/bin/sh
# berth example `docker`, exec (root): `berth exec JOB CMD...` runs "$@" (WRAPPER CMD
# ARGS...) in the job's running container, as the job's owner, in the job's directory,
# with a terminal when berth gives the hook one.
set -eu

# --- site settings: edit them, then re-sign: berth container sign docker ---
ENGINE=docker
CONTAINERS_CONF_FILE=
# ---------------------------------------------------------------------------

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
# The job's own wrapper reports to BERTH_VW_STATUS (in the container's environment):
# this one must not.
# shellcheck disable=SC2086 # $tty is zero, one or two words
exec "$ENGINE" exec $tty --user "$BERTH_JOB_UID:$BERTH_JOB_GID" --env BERTH_VW_STATUS= \
    --workdir "$jobdir" "$name" "$@"
