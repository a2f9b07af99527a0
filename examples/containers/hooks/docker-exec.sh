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
# The container of this job, by its id: a name passes to the slot's next job, and the
# container with it (its label says whose it is).
info=$("$ENGINE" inspect --format '{{.Id}} {{index .Config.Labels "berth.job"}}' "$name" 2>/dev/null) || {
    echo "docker-exec: job $VOV_JOBID's container $name is gone" >&2
    exit 1
}
cid=${info%% *}
if [ "${info#* }" != "$VOV_JOBID" ]; then
    echo "docker-exec: container $name is not job $VOV_JOBID's" >&2
    exit 1
fi
jobdir=${VOV_CONTAINER_JOB_RUNDIR:-$PWD}
# berth exec -i: the user's input goes to the command; -t: it gets a terminal.
tty=
[ "${BERTH_EXEC_STDIN:-0}" = 1 ] && tty="--interactive"
[ "${BERTH_EXEC_TTY:-0}" = 1 ] && tty="$tty --tty"
# The job's own wrapper reports to BERTH_VW_STATUS (in the container's environment):
# this one must not.
# shellcheck disable=SC2086 # $tty is zero, one or two words
exec "$ENGINE" exec $tty --user "$BERTH_JOB_UID:$BERTH_JOB_GID" --env BERTH_VW_STATUS= \
    --workdir "$jobdir" "$cid" "$@"
