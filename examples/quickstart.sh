#!/bin/sh
# berth's first command: from a fresh checkout on Debian or Ubuntu, as root, install what
# berth's containers need, build berth, make a local busybox image, install the example
# container configurations, and run a first job in a container.
#
#   sudo sh examples/quickstart.sh
#
# Settings (environment): BERTH_SWD (default ./berth.swd), BERTH_HOOKS (default
# /usr/local/libexec/berth/hooks).
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
swd=${BERTH_SWD:-$PWD/berth.swd}
hooks=${BERTH_HOOKS:-/usr/local/libexec/berth/hooks}
step() { printf '\n== %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (root hooks, podman, apt-get): sudo sh $0" >&2; exit 1; }

step "installing podman, runc, bubblewrap and a static busybox"
missing=
for p in podman runc bubblewrap busybox-static; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
else
    echo "already installed"
fi

step "building berth (cargo build --release)"
(cd "$repo" && cargo build --release -p berth)
berth=$repo/target/release/berth

step "making the image localhost/berth-test:latest from local files"
mkdir -p "$hooks"
chmod 755 "$hooks"
conf=$(dirname "$hooks")/containers.conf
cp "$repo/examples/containers/containers.conf" "$conf"
chmod 644 "$conf"
CONTAINERS_CONF=$conf sh "$repo/examples/containers/make-image.sh" "$(dirname "$hooks")/rootfs"

step "installing the example configurations into $swd/containers"
sh "$repo/examples/containers/install.sh" --swd "$swd" --hooks "$hooks" --berth "$berth" \
    --engine podman --image localhost/berth-test:latest --containers-conf "$conf" \
    --rootfs "$(dirname "$hooks")/rootfs"
"$berth" container list --swd "$swd"

step "running a first job in a container, as nobody"
work=$(mktemp -d /tmp/berth-quickstart.XXXXXX)
chmod 755 "$work"
chown nobody "$work"
cd "$work"
echo "+ berth container try --user nobody -r 'CORES/1 RAM/256' docker -- cat /etc/os-release"
"$berth" container try --swd "$swd" --user nobody -r "CORES/1 RAM/256" docker -- cat /etc/os-release
echo
echo "berth is at $berth; its configurations are in $swd/containers."
