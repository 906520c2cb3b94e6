#!/bin/sh
# /init of the test initramfs (busybox sh). It stands in for what a production kernel
# does by itself (drivers built in): load the few modules the VM needs, mount the root
# drive read-only and hand over to its /sbin/init, leaving the root filesystem exactly
# as a node presents it: / read-only, /dev a devtmpfs, nothing else mounted.
#
# Kernel command line: root= (default /dev/vda), rootfstype= (default: detected),
# init= (default /sbin/init), rootwait= seconds (default 10), rd.break (shell instead of
# switching root), and `module.param=value` for the modules loaded here.
export PATH=/bin

mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc -o nosuid,noexec,nodev proc /proc

log() { read -r up _ </proc/uptime; echo "$up initramfs: $*"; }
fail() {
  log "FATAL: $*"
  # PID 1 exiting panics the kernel; with panic=1 and -no-reboot the VM simply ends.
  case " $cmdline " in *" rd.break "*) exec sh ;; esac
  exit 1
}

read -r cmdline </proc/cmdline
root=/dev/vda rootfstype= init=/sbin/init rootwait=10
for arg in $cmdline; do
  case $arg in
    root=*) root=${arg#root=} ;;
    rootfstype=*) rootfstype=${arg#rootfstype=} ;;
    init=*) init=${arg#init=} ;;
    rootwait=*) rootwait=${arg#rootwait=} ;;
  esac
done
log "started, loading modules"

# Modules in dependency order (resolved from modules.dep at build time). busybox insmod
# does not read the kernel command line as modprobe does, so pass `name.param=value` on.
while read -r mod; do
  params=
  for arg in $cmdline; do
    case $arg in "$mod".*=*) params="$params ${arg#"$mod".}" ;; esac
  done
  # shellcheck disable=SC2086
  insmod "/lib/modules/$mod.ko" $params || log "insmod $mod failed"
done </lib/modules/load-order

i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ "$i" -le $((rootwait * 100)) ] || fail "root device $root did not appear"
  sleep 0.01
done
log "modules loaded, mounting $root read-only"

mkdir -p /newroot
if [ -n "$rootfstype" ]; then
  mount -t "$rootfstype" -o ro "$root" /newroot || fail "cannot mount $root ($rootfstype)"
else
  mount -o ro "$root" /newroot || fail "cannot mount $root"
fi
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || fail "no $init on $root"
case " $cmdline " in *" rd.break "*) log "rd.break: shell before switch_root"; sh ;; esac

log "switching root to $root, exec $init"
mount --move /dev /newroot/dev || fail "/dev missing on $root"
umount /proc
exec switch_root /newroot "$init" "$@"
