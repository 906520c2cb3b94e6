#!/bin/sh
# Quick repack after changing only the init (init/) or aleph_runtime: reuse the last
# finished image tree of the runtime and profile, replace /sbin/init, /opt/aleph/init and
# /opt/aleph/runtime in it, byte-compile those, mksquashfs. Falls back to a full build
# when there is no finished tree for the current Debian/Python stages.
# Usage: update-init.sh [--runtime debian-12|debian-13] [--profile lean|full] [--compression lz4|gzip|zstd]
#                       [--level N] [--out DIR]
# e.g. `update-init.sh --compression zstd --level 3` re-packs the lean image in seconds.
exec "$(dirname "$0")/build-rootfs.sh" --update-init "$@"
