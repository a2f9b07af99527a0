#!/bin/sh
# berth's first command: from a fresh checkout on Debian or Ubuntu, as root, install what
# berth's containers need, build berth, start `berth up --examples` (server and tasker in
# one process, SQLite state, the example configurations and a local busybox image), and
# run a first job in a container as nobody.
#
#   sudo sh examples/quickstart.sh
#
# Settings (environment): BERTH_SWD (default ./berth.swd).
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
swd=${BERTH_SWD:-$PWD/berth.swd}
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

step "starting berth up --examples (a server and a tasker in one process) on $swd"
if [ -S "$swd/berth.sock" ] && "$berth" taskers --swd "$swd" >/dev/null 2>&1; then
    echo "a berth server already runs on $swd"
else
    mkdir -p "$swd"
    nohup "$berth" up --swd "$swd" --examples >"$swd/up.log" 2>&1 &
    i=0
    until "$berth" taskers --swd "$swd" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 600 ] || ! kill -0 $! 2>/dev/null; then
            cat "$swd/up.log" >&2
            echo "quickstart: berth up did not start; its log is above" >&2
            exit 1
        fi
        sleep 0.2
    done
    cat "$swd/up.log"
fi
"$berth" containers --swd "$swd"

step "running a first job in a container, as nobody"
work=$(mktemp -d /tmp/berth-quickstart.XXXXXX)
chmod 755 "$work"
chown nobody "$work"
cd "$work"
echo "+ berth run -w -r Container:docker -- cat /etc/os-release   (as nobody, in $work)"
setpriv --reuid=nobody --regid=nogroup --clear-groups env BERTH_SWD="$swd" \
    "$berth" run -w -r Container:docker -- cat /etc/os-release
cat "$work"/berth-*.log
echo
echo "berth is at $berth; the server runs on $swd (log: $swd/up.log)."
echo "Try: $berth list --swd $swd    Stop the server: pkill -f \"berth up --swd $swd\""
