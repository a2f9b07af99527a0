#!/bin/sh
# berth example `bwrap`, enter (user): run the job in an unprivileged bubblewrap sandbox
# whose root is an image directory. "$@" is WRAPPER CMD ARGS....
# Limits: TMP is the size of /tmp; RAM bounds the address space (ulimit -v), since an
# unprivileged sandbox has no cgroup of its own; CORES is not enforced.
set -eu

# --- site settings: edit them, then re-sign: berth container sign bwrap ---
ROOTFS=/srv/berth/rootfs
# --------------------------------------------------------------------------

wrapper=$1
vwdir=${wrapper%/*}
jobdir=${VOV_CONTAINER_JOB_RUNDIR:-$PWD}
n=$#
# The sandbox's root is bwrap's own tmpfs, with each top-level entry of the image bound
# read-only, so that bwrap can make mount points for the job's directory anywhere.
# /tmp comes before the job's directory, which may lie below it.
if [ -n "${VOV_CONTAINER_TMP:-}" ]; then
    set -- "$@" --size $((VOV_CONTAINER_TMP * 1024 * 1024)) --tmpfs /tmp
else
    set -- "$@" --tmpfs /tmp
fi
set -- "$@" --proc /proc --dev /dev
for entry in "$ROOTFS"/*; do
    base=${entry##*/}
    case $base in
    proc | dev | tmp) continue ;;
    esac
    if [ -L "$entry" ]; then
        set -- "$@" --symlink "$(readlink "$entry")" "/$base"
    else
        set -- "$@" --ro-bind "$entry" "/$base"
    fi
done
set -- "$@" --bind "$jobdir" "$jobdir" --ro-bind "$vwdir" "$vwdir" --chdir "$jobdir" \
    --unshare-pid --unshare-ipc --unshare-uts --die-with-parent
# A session of its own, so that the job cannot push input into a terminal with TIOCSTI
# (berth already starts the hook without one); an interactive job keeps its own terminal.
if [ ! -t 0 ]; then
    set -- "$@" --new-session
fi
i=0
while [ "$i" -lt "$n" ]; do
    set -- "$@" "$1"
    shift
    i=$((i + 1))
done
if [ -n "${VOV_CONTAINER_RAM:-}" ]; then
    ulimit -v $((VOV_CONTAINER_RAM * 1024))
fi
exec bwrap "$@"
