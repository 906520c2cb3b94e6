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
# A cold build takes tens of minutes on 2 cores: it runs under `nice`.
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
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
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
step "node kernel: building $srcpkg $srcver (gcc $gccver, recipe $RECIPE, -j$jobs) into $out"

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

step "compiling vmlinux (nice -n 10, -j$jobs)"
nice -n 10 make -j"$jobs" -s vmlinux >build.log 2>&1 || { tail -40 build.log >&2; die "kernel build failed"; }
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
