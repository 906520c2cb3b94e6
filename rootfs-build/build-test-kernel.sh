#!/bin/sh
# Build the kernel and initramfs that boot the runtime image in QEMU for local runs and
# tests: Debian's cloud kernel (downloaded with apt from the machine's mirror) and a tiny
# busybox initramfs that loads just the modules a program VM needs (virtio mmio/pci,
# block, net, vsock, squashfs, overlay, loop; ext4 is built in), mounts /dev/vda
# read-only and switch_roots to its /sbin/init.
#
# Usage: build-test-kernel.sh [--out DIR] [--force]
# Without --out the result is cached in $ALEPH_RUNTIME_CACHE/kernel/<hash of inputs>/
# and reused while the inputs (these scripts, the kernel and busybox package versions)
# do not change. Progress goes to stderr; the last line on stdout is the output
# directory, which holds vmlinuz, initramfs.cpio.gz, config, modules.txt, kernel.txt.
# Needs root (device node in the cpio), apt lists, busybox-static, cpio, gzip.
set -eu
. "$(cd "$(dirname "$0")" && pwd)/common.sh"

out= force=
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

# The modules wanted; their dependencies come from modules.dep.
MODULES="virtio_pci virtio_mmio virtio_blk virtio_net vmw_vsock_virtio_transport squashfs overlay loop ext4"

meta=${ALEPH_KERNEL_PACKAGE:-linux-image-cloud-amd64}
kpkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || kpkg=$meta
kver=$(apt_version "$kpkg")
[ -n "$kver" ] && [ "$kver" != "(none)" ] || die "apt knows no $kpkg: run apt-get update"
bbver=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null) || die "busybox-static is not installed"
[ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static)"

# The initramfs's timestamps: the last commit of its own inputs.
epoch=$(source_date_epoch rootfs-build/build-test-kernel.sh rootfs-build/initramfs-init.sh)
# (Not common.sh: its helpers do not change what is built, and the kernel path should
# stay put while the image's scripts evolve.)
key=$( { cat "$BUILD_DIR/build-test-kernel.sh" "$BUILD_DIR/initramfs-init.sh"
         echo "$kpkg $kver busybox $bbver $MODULES $epoch"; } | short_hash)
if [ -z "$out" ]; then
  out=$CACHE_DIR/kernel/$key
  if [ -z "$force" ] && [ -f "$out/.complete" ]; then
    step "kernel: cached ($kpkg $kver) in $out"
    echo "$out"
    exit 0
  fi
fi
lock kernel
if [ -z "$force" ] && [ -f "$out/.complete" ]; then  # built meanwhile by another process
  echo "$out"; exit 0
fi
step "kernel: building $kpkg $kver with busybox $bbver into $out"

mkdir -p "$CACHE_DIR/tmp"
work=$(mktemp -d "$CACHE_DIR/tmp/kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

step "apt-get download $kpkg=$kver"
apt_download "$kpkg=$kver"
step "unpacking the kernel package"
dpkg-deb -x ./*.deb pkg
krel=$(ls pkg/lib/modules)
[ -f "pkg/boot/vmlinuz-$krel" ] || die "no vmlinuz-$krel in $kpkg"
# Debian ships no modules.dep (depmod runs at install): generate it with busybox.
busybox depmod -b pkg "$krel"
mods=pkg/lib/modules/$krel

step "resolving module dependencies from modules.dep"
order= seen=
resolve() {
  case " $seen " in *" $1 "*) return 0 ;; esac
  seen="$seen $1"
  _deps=$(awk -v m="$1" '{k=$1; sub(/:$/,"",k)} k==m {$1=""; print; exit}' "$mods/modules.dep")
  for _d in $_deps; do resolve "$_d"; done
  order="$order $1"
}
for m in $MODULES; do
  path=$(awk -v m="$m" '{k=$1; sub(/:$/,"",k); n=k; sub(/.*\//,"",n)} n==m".ko" {print k; exit}' "$mods/modules.dep")
  if [ -z "$path" ]; then
    grep -q "/$m\.ko\$" "$mods/modules.builtin" || die "module $m is neither a module nor built in"
    echo "$m built in" >&2
    continue
  fi
  resolve "$path"
done

step "assembling the initramfs"
root=$work/initramfs
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/newroot" "$root/lib/modules"
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount umount insmod switch_root mkdir sleep cat echo ls; do
  ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$BUILD_DIR/initramfs-init.sh" "$root/init"
mknod -m 0600 "$root/dev/console" c 5 1
: >"$root/lib/modules/load-order"
for p in $order; do
  n=$(basename "$p" .ko)
  cp "$mods/$p" "$root/lib/modules/$n.ko"
  echo "$n" >>"$root/lib/modules/load-order"
done
echo "modules:" $(cat "$root/lib/modules/load-order") >&2

# Reproducible archive: fixed mtimes, sorted names, owner root, no inode numbers.
find "$root" -exec touch -h -d "@$epoch" {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
  cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) | gzip -9n >initramfs.cpio.gz

mkdir -p "$(dirname "$out")"
rm -rf "$out.new"
mkdir -p "$out.new"
cp "pkg/boot/vmlinuz-$krel" "$out.new/vmlinuz"
cp "pkg/boot/config-$krel" "$out.new/config"
mv initramfs.cpio.gz "$out.new/"
cp "$root/lib/modules/load-order" "$out.new/modules.txt"
printf 'package=%s\nversion=%s\nrelease=%s\nbusybox=%s\n' "$kpkg" "$kver" "$krel" "$bbver" >"$out.new/kernel.txt"
touch "$out.new/.complete"
rm -rf "$out"
mv "$out.new" "$out"
step "kernel: done, $(du -sh "$out/vmlinuz" | cut -f1) vmlinuz, $(du -sh "$out/initramfs.cpio.gz" | cut -f1) initramfs"
echo "$out"
