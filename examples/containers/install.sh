#!/bin/sh
# Installs berth's example container configurations: copies the hooks into a directory
# only root can change, applies the site settings given here, writes the configurations
# into SWD/containers with the hooks' paths, and re-signs them.
#
#   install.sh [--swd SWD] [--hooks DIR] [--berth BERTH] [--engine docker|podman]
#              [--image IMAGE] [--rootfs DIR] [--containers-conf FILE] [NAME...]
#
# NAME is docker, podman-split or bwrap (default: all three).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
swd=${BERTH_SWD:-berth.swd}
hooks=/usr/local/libexec/berth/hooks
berth=berth
engine= image= rootfs= conf=
while [ $# -gt 0 ]; do
    case $1 in
    --swd) swd=$2; shift 2 ;;
    --hooks) hooks=$2; shift 2 ;;
    --berth) berth=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --rootfs) rootfs=$2; shift 2 ;;
    --containers-conf) conf=$2; shift 2 ;;
    -h|--help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || set -- docker podman-split bwrap
case $hooks in
/*) ;;
*) echo "install.sh: --hooks must be an absolute path, not $hooks" >&2; exit 2 ;;
esac

# A value goes into a sed replacement and a shell assignment: refuse what would need
# quoting in either.
for v in "$hooks" "$engine" "$image" "$rootfs" "$conf"; do
    case $v in
    *[!A-Za-z0-9_./:@+-]*) echo "install.sh: $v: only letters, digits and _ . / : @ + - are allowed" >&2; exit 2 ;;
    esac
done

mkdir -p "$hooks" "$swd/containers"
chmod 755 "$hooks"
for name in "$@"; do
    case $name in
    docker) files="docker-enter.sh docker-exec.sh" ;;
    podman-split) files="podman-setup.sh podman-enter.sh podman-cleanup.sh podman-teardown.sh podman-exec.sh" ;;
    bwrap) files="bwrap-setup.sh bwrap-enter.sh bwrap-exec.sh" ;;
    *) echo "install.sh: no example named $name (docker, podman-split, bwrap)" >&2; exit 2 ;;
    esac
    for f in $files; do
        sed -e "${engine:+s|^ENGINE=.*|ENGINE=$engine|}" \
            -e "${image:+s|^IMAGE=.*|IMAGE=$image|}" \
            -e "${rootfs:+s|^ROOTFS=.*|ROOTFS=$rootfs|}" \
            -e "${conf:+s|^CONTAINERS_CONF_FILE=.*|CONTAINERS_CONF_FILE=$conf|}" \
            "$here/hooks/$f" >"$hooks/$f.new"
        chmod 755 "$hooks/$f.new"
        mv "$hooks/$f.new" "$hooks/$f"
    done
    sed "s|/usr/local/libexec/berth/hooks/|$hooks/|" "$here/$name.cfg" >"$swd/containers/$name.cfg.new"
    chmod 644 "$swd/containers/$name.cfg.new"
    mv "$swd/containers/$name.cfg.new" "$swd/containers/$name.cfg"
    "$berth" container sign --swd "$swd" "$name"
done
