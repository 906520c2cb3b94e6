#!/bin/sh
# Build the node-like kernel: Debian's linux-source-6.1, `make defconfig`, then our
# fragment (node-kernel.config, modelled on aleph-vm's microvm kernel config) merged with
# the kernel's own scripts/kconfig/merge_config.sh. Everything built in (no modules, no
# initramfs), virtio-mmio, booted as an uncompressed ELF vmlinux through its PVH entry,
# as QEMU's `-M microvm` boots it (a node's Firecracker boots its vmlinux the same way,
# without firmware or decompressor).
#
# Usage: build-node-kernel.sh [--out DIR] [--force] [--jobs N]
# Without --out the result is cached in $ALEPH_RUNTIME_CACHE/node-kernel/<hash of inputs>/
# and reused while the inputs (this script, the fragment, RECIPE, the linux-source and
# gcc versions) do not change. Progress goes to stderr; the last line on stdout is the
# output directory, which holds vmlinux, config (the full .config) and kernel.txt.
# Needs linux-source-6.1, gcc, make, flex, bison, bc, libelf-dev, libssl-dev (setup.sh).
# A cold build takes about 13 min on 2 cores (its first line says how long on this many),
# under `nice`; on a terminal a moving line counts the objects compiled out of the total
# (make-progress.sh), with the time left.
set -eu
. "$(cd "$(dirname "$0")" && pwd)/common.sh"

# Bump when the way the kernel is built changes in a way the hashed files do not show.
RECIPE=1

out= force= jobs=${ALEPH_KERNEL_JOBS:-$(nproc)}
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --force) force=1; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

srcpkg=linux-source-6.1
tarball=/usr/src/$srcpkg.tar.xz
srcver=$(dpkg-query -W -f='${Version}' "$srcpkg" 2>/dev/null) || die "$srcpkg is not installed (scripts/setup.sh installs it)"
[ -f "$tarball" ] || die "$tarball missing ($srcpkg)"
for tool in gcc make flex bison bc; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/setup.sh installs it)"
done
gccver=$(gcc -dumpfullversion)
fragment=$BUILD_DIR/node-kernel.config

# The kernel's embedded build date: the source tarball's, fixed per package version, so
# equal inputs give an equal vmlinux (and a commit touching nothing here keeps the cache).
epoch=$(stat -c %Y "$tarball")
key=$( { echo "recipe $RECIPE"; cat "$BUILD_DIR/build-node-kernel.sh" "$fragment"
         echo "$srcpkg $srcver gcc $gccver"; } | short_hash)
if [ -z "$out" ]; then
  out=$CACHE_DIR/node-kernel/$key
  if [ -z "$force" ] && [ -f "$out/.complete" ]; then
    step "node kernel: cached ($srcpkg $srcver) in $out"
    echo "$out"
    exit 0
  fi
fi
lock node-kernel
if [ -z "$force" ] && [ -f "$out/.complete" ]; then  # built meanwhile by another process
  echo "$out"; exit 0
fi
# What a cold build costs, said before it starts: measured, compiling alone took 11 min at
# -j2 on a 2-core VM (about 22 core-minutes), unpacking and configuring 1-2 min more.
estimate=$(( (1320 / jobs + 90 + 30) / 60 ))  # minutes, rounded
step "node kernel: not in the cache: building $srcpkg $srcver (gcc $gccver, recipe $RECIPE) into $out; about $estimate min with -j$jobs on $(nproc) cores"

mkdir -p "$CACHE_DIR/tmp"
work=$(mktemp -d "$CACHE_DIR/tmp/node-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
step "unpacking $tarball"
tar -xf "$tarball" -C "$work"
cd "$work/$srcpkg"

export ARCH=x86_64 KBUILD_BUILD_TIMESTAMP="@$epoch" KBUILD_BUILD_USER=aleph KBUILD_BUILD_HOST=aleph-runtime
step "configuring: defconfig + node-kernel.config"
make -s defconfig >/dev/null
scripts/kconfig/merge_config.sh .config "$fragment" >merge.log 2>&1 || { cat merge.log >&2; die "merge_config.sh failed"; }
# merge_config.sh only warns when Kconfig drops or overrides a requested value (an
# unmet dependency): here that is an error, the kernel would lack what we asked for.
missing=$(awk '
  /^CONFIG_[A-Za-z0-9_]+=/ { split($0, kv, "="); want[kv[1]] = $0; next }
  /^# CONFIG_[A-Za-z0-9_]+ is not set/ { want[$2] = "n"; next }
  END { for (k in want) print k "\t" want[k] }' "$fragment" |
  while IFS="$(printf '\t')" read -r name line; do
    if [ "$line" = n ]; then
      grep -q "^$name=" .config && echo "$name (wanted off)"
    else
      grep -qxF "$line" .config || echo "$line"
    fi
  done) || true
[ -z "$missing" ] || die "Kconfig did not keep these fragment values (dependencies?):
$missing"

step "preparing the build (headers, host tools)"
nice -n 10 make -j"$jobs" -s prepare >build.log 2>&1 || { tail -40 build.log >&2; die "kernel build failed"; }
# The objects to compile, from make's dry run on the prepared tree (seconds): the total the
# progress line counts against (0 when the dry run fails: the count alone).
objects=$(make -n vmlinux 2>/dev/null | grep -c "echo '  CC ") || objects=0
step "compiling vmlinux (nice -n 10, -j$jobs): $objects objects"
# A moving progress line on a terminal (ALEPH_RUNTIME_PROGRESS=1: our stderr ends on one,
# through a pipe); the stage lines alone otherwise. make's status through the pipe: a file.
tty=0
if [ -t 2 ] || [ "${ALEPH_RUNTIME_PROGRESS:-}" = 1 ]; then tty=1; fi
{ nice -n 10 make -j"$jobs" vmlinux 2>&1; echo $? >make.status; } |
  "$BUILD_DIR/make-progress.sh" "$tty" "$objects" "compiling vmlinux" >>build.log
[ "$(cat make.status)" = 0 ] || { grep -v '^  [A-Z0-9_]* ' build.log | tail -40 >&2; die "kernel build failed"; }
# The PVH entry point QEMU needs to boot the ELF directly.
grep -q '^CONFIG_PVH=y' .config || die "built without CONFIG_PVH"

mkdir -p "$(dirname "$out")"
rm -rf "$out.new"
mkdir -p "$out.new"
cp vmlinux "$out.new/vmlinux"
cp .config "$out.new/config"
release=$(make -s kernelrelease)
printf 'source=%s\nversion=%s\nrelease=%s\ngcc=%s\nrecipe=%s\n' \
  "$srcpkg" "$srcver" "$release" "$gccver" "$RECIPE" >"$out.new/kernel.txt"
touch "$out.new/.complete"
rm -rf "$out"
mv "$out.new" "$out"
step "node kernel: done, $(du -sh "$out/vmlinux" | cut -f1) vmlinux ($release)"
echo "$out"
