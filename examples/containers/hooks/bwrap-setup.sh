#!/bin/sh
# berth example `bwrap`, setup (user): make sure the image is there before the job starts.
set -eu

# --- site settings: edit them, then re-sign: berth container sign bwrap ---
ROOTFS=/srv/berth/rootfs
# --------------------------------------------------------------------------

if [ ! -x "$ROOTFS/bin/sh" ]; then
    echo "bwrap: no image at $ROOTFS (it needs at least bin/sh and etc/passwd)" >&2
    exit 1
fi
