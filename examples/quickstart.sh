#!/bin/sh
# berth's first command: from a fresh checkout on Debian or Ubuntu, as root, install what
# berth's containers need, build berth and install it as /usr/local/bin/berth, start
# `berth up --examples` (server and tasker in one process, SQLite state, the example
# configurations and a local busybox image), and run a first job in a container as
# nobody.
#
#   sh examples/quickstart.sh [--swd DIR] [--project NAME]      (as root, or with sudo)
#
# --swd DIR        the server's working directory (default: $BERTH_SWD, else ./berth.swd)
# --project NAME   the project (VOV_PROJECT_NAME; the examples name their containers after
#                  it, so two servers on one host need two names; default: berth)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
swd=${BERTH_SWD:-$PWD/berth.swd}
project=berth
while [ $# -gt 0 ]; do
    case $1 in
        --swd) [ $# -ge 2 ] || { echo "quickstart: --swd needs a directory" >&2; exit 2; }
               swd=$2; shift 2 ;;
        --project) [ $# -ge 2 ] || { echo "quickstart: --project needs a name" >&2; exit 2; }
                   project=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "quickstart: unknown argument $1 (see: sh $0 --help)" >&2; exit 2 ;;
    esac
done
case $swd in /*) ;; *) swd=$PWD/$swd ;; esac
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

step "building berth (cargo build --release) and installing it as /usr/local/bin/berth"
# Under sudo, cargo is the invoking user's (root's PATH may not have it).
cargo=$(command -v cargo || true)
if [ -z "$cargo" ] && [ -n "${SUDO_USER:-}" ]; then
    for c in "$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin/cargo"; do
        [ -x "$c" ] && cargo=$c
    done
fi
[ -n "$cargo" ] || { echo "quickstart: cargo is not on the PATH; install Rust (https://rustup.rs)" >&2; exit 1; }
(cd "$repo" && "$cargo" build --release -p berth)
install -m 0755 "$repo/target/release/berth" /usr/local/bin/berth
berth=/usr/local/bin/berth

step "starting berth up --examples --project $project (a server and a tasker in one process) on $swd"
if [ -S "$swd/berth.sock" ] && "$berth" taskers --swd "$swd" >/dev/null 2>&1; then
    echo "a berth server already runs on $swd"
else
    mkdir -p "$swd"
    nohup "$berth" up --swd "$swd" --project "$project" --examples >"$swd/up.log" 2>&1 &
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
echo "+ berth run -wl -r Container:docker cat /etc/os-release   (as nobody, in $work)"
setpriv --reuid=nobody --regid=nogroup --clear-groups env BERTH_SWD="$swd" \
    "$berth" run -wl -r Container:docker cat /etc/os-release
echo
echo "berth is $berth; the server runs on $swd (its log: $swd/up.log)."
echo "Try:  berth list --swd $swd"
echo "Stop: berth down --swd $swd    (running jobs run on; the next berth up takes them over)"
