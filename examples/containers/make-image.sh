#!/bin/sh
# Builds a test image from local files (no registry is needed): a root filesystem holding
# the host's static busybox, an /etc/passwd that resolves root and nobody, and an
# /etc/os-release; then imports it into podman.
#
#   make-image.sh ROOTFS [IMAGE]
#
# ROOTFS is the directory to fill (the bwrap example uses it as is); IMAGE (default
# localhost/berth-test:latest) is the podman image made from it, unless podman is absent.
# Both carry VERSION: an older tree or image is made anew. CONTAINERS_CONF is honoured.
set -eu
VERSION=2
rootfs=${1:?usage: make-image.sh ROOTFS [IMAGE]}
image=${2:-localhost/berth-test:latest}
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "make-image.sh: no busybox; install busybox-static" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
    echo "make-image.sh: $busybox is not static; install busybox-static" >&2
    exit 1
fi
if [ "$(cat "$rootfs/.berth-image" 2>/dev/null)" != "$VERSION" ]; then
    tmp=$rootfs.new.$$
    rm -rf "$tmp"
    mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/proc" "$tmp/sys" "$tmp/dev" "$tmp/root" "$tmp/tmp"
    chmod 755 "$tmp"
    chmod 1777 "$tmp/tmp"
    cp "$busybox" "$tmp/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$tmp/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$tmp/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/etc/group"
    printf 'NAME="berth test image"\nID=berth-busybox\nPRETTY_NAME="berth test image (static busybox)"\n' >"$tmp/etc/os-release"
    echo "$VERSION" >"$tmp/.berth-image"
    rm -rf "$rootfs"
    mv "$tmp" "$rootfs"
fi
have=
if command -v podman >/dev/null 2>&1; then
    have=$(podman image inspect --format '{{index .Labels "berth.image"}}' "$image" 2>/dev/null || true)
fi
if command -v podman >/dev/null 2>&1 && [ "$have" != "$VERSION" ]; then
    tar -C "$rootfs" -cf "$rootfs.tar" .
    if ! out=$(podman import --change "LABEL berth.image=$VERSION" "$rootfs.tar" "$image" 2>&1); then
        echo "$out" >&2
        exit 1
    fi
    rm -f "$rootfs.tar"
    echo "imported $image from $rootfs"
fi
