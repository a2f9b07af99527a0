#!/bin/sh
# berth example `docker`: one all-in-one enter hook, in the documented style.
# Runs as root. "$@" is WRAPPER CMD ARGS...: the job runs in a fresh container, as its
# owner's uid, with the job's limits, and the container is removed when it ends (--rm,
# and a final rm for a container that a stop caught half-started).
# ENGINE may be podman, which takes the same flags.
set -eu

# --- site settings: edit them, then re-sign: berth container sign docker ---
ENGINE=docker
IMAGE=busybox:latest
CONTAINERS_CONF_FILE=
# ---------------------------------------------------------------------------

if [ -n "$CONTAINERS_CONF_FILE" ]; then
    CONTAINERS_CONF=$CONTAINERS_CONF_FILE
    export CONTAINERS_CONF
fi

wrapper=$1
vwdir=${wrapper%/*}
jobdir=${VOV_CONTAINER_JOB_RUNDIR:-$PWD}
name="$VOV_PROJECT_NAME-$HOST-$VOV_CONTAINER_NAME-$VOV_JOBSLOT"
# The job owner: berth says so; the job's environment (USER) is the fallback.
uid=${BERTH_JOB_UID:-$(id -u "$(sed -n 's/^USER=//p' "$VOV_CONTAINER_ENV_FILE")")}
gid=${BERTH_JOB_GID:-$(id -g "$uid")}

# Append the engine's options after "$@", then rotate the job's words to the end, so
# that no word of the job's command line is ever split or globbed.
n=$#
set -- "$@" run --rm --name "$name" --label "berth.job=$VOV_JOBID" --user "$uid:$gid" \
    --env-file "$VOV_CONTAINER_ENV_FILE" \
    --volume "$jobdir:$jobdir" --workdir "$jobdir" \
    --volume "$vwdir:$vwdir:ro" \
    --cpus "$VOV_CONTAINER_CORES"
if [ -n "${VOV_CONTAINER_RAM:-}" ]; then
    set -- "$@" --memory "${VOV_CONTAINER_RAM}m" --memory-swap "${VOV_CONTAINER_RAM}m"
fi
if [ -n "${VOV_CONTAINER_TMP:-}" ]; then
    set -- "$@" --tmpfs "/tmp:rw,nosuid,nodev,size=${VOV_CONTAINER_TMP}m"
fi
# An interactive job (berth run -I): the hook's standard input is the job's terminal.
if [ -t 0 ]; then
    set -- "$@" --interactive --tty
fi
set -- "$@" "$IMAGE"
i=0
while [ "$i" -lt "$n" ]; do
    set -- "$@" "$1"
    shift
    i=$((i + 1))
done
# The engine runs in the background so that a stop reaches the container by its name:
# `run` passes signals on only once its own signal proxy is up, and a stop can come
# sooner. A container that `--rm` may not have removed (a stop, a failure) is removed on
# the way out; after a clean exit there is none, and no second engine call is paid for.
# (A command in the background reads /dev/null unless told otherwise: fd 3 keeps the
# hook's standard input, the terminal of an interactive job, for it.)
exec 3<&0
"$ENGINE" "$@" <&3 &
engine=$!
stopped=0
stop() {
    stopped=1
    "$ENGINE" kill --signal TERM "$name" >/dev/null 2>&1 || kill -TERM "$engine" 2>/dev/null
}
trap stop TERM INT HUP
status=0
wait "$engine" || status=$?
# A trapped signal ends `wait` early: wait again until the engine is really done.
while kill -0 "$engine" 2>/dev/null; do
    status=0
    wait "$engine" || status=$?
done
if [ "$status" -ne 0 ] || [ "$stopped" -eq 1 ]; then
    "$ENGINE" rm --force "$name" >/dev/null 2>&1 || true
fi
exit "$status"
