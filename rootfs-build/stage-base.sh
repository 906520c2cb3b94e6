#!/bin/sh
# Stage 1 of build-rootfs.sh: `debootstrap --variant=minbase SUITE` (bookworm for the
# debian-12 runtime, trixie for debian-13) from the machine's Debian mirror, Debian's
# updates and security fixes applied, then the packages of the runtime and profile
# (packages-lean.txt, packages-RUNTIME.txt if it exists, plus packages-full.txt and
# packages-full-RUNTIME.txt if it exists for the full profile), without Recommends. build-rootfs.sh caches the result keyed by a hash
# of this file and the package lists: any change here rebuilds the stage.
#
# Usage: stage-base.sh ROOT PROFILE [RUNTIME]   (ROOT must not exist; default debian-12)
set -eu
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
root=$1 profile=$2 runtime=${3:-debian-12}
[ ! -e "$root" ] || die "$root exists"
suite=$(runtime_suite "$runtime")

mirror=$(debian_mirror)
security=$(debian_security_mirror)
mkdir -p "$CACHE_DIR/debs"

step "base: debootstrap --variant=minbase $suite from $mirror"
# A mirror drops a download now and then, and debootstrap does not retry: try again
# (up to 3 times) when that is why it failed; what it fetched stays in the .deb cache.
attempt=1
until debootstrap --variant=minbase --components=main --cache-dir="$CACHE_DIR/debs" \
  "$suite" "$root" "$mirror" >"$root.debootstrap.log" 2>&1; do
  if [ $attempt -lt 3 ] && grep -q "Couldn't download" "$root.debootstrap.log"; then
    step "base: debootstrap could not download some packages; attempt $((attempt + 1))"
    attempt=$((attempt + 1))
    rm -rf "$root"
    continue
  fi
  tail -30 "$root.debootstrap.log" >&2; die "debootstrap failed (log: $root.debootstrap.log)"
done
rm -f "$root.debootstrap.log"

{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$suite" "$suite"
  printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  if [ -n "$security" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security" "$suite"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  fi
} >"$root/etc/apt/sources.list.d/debian.sources"
rm -f "$root/etc/apt/sources.list"
# Never start services while building; no Recommends, no docs (dpkg skips them).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/90aleph-norecommends"
cat >"$root/etc/dpkg/dpkg.cfg.d/90aleph-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf"

pkgs=$(sed 's/#.*//' "$BUILD_DIR/packages-lean.txt")
[ ! -f "$BUILD_DIR/packages-$runtime.txt" ] || pkgs="$pkgs $(sed 's/#.*//' "$BUILD_DIR/packages-$runtime.txt")"
[ "$profile" = lean ] || pkgs="$pkgs $(sed 's/#.*//' "$BUILD_DIR/packages-$profile.txt")"
[ "$profile" = lean ] || [ ! -f "$BUILD_DIR/packages-$profile-$runtime.txt" ] ||
  pkgs="$pkgs $(sed 's/#.*//' "$BUILD_DIR/packages-$profile-$runtime.txt")"
pkgs=$(echo $pkgs)
step "base: apt-get dist-upgrade, then install ($runtime, $profile): $pkgs"
mkdir -p "$CACHE_DIR/apt-archives/partial"
# A private mount namespace: /proc and the .deb cache vanish with it, even on failure.
unshare -m sh -eu -c '
  root=$1; archives=$2; shift 2
  mount -t proc proc "$root/proc"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
  mount --bind "$archives" "$root/var/cache/apt/archives"
  export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
  chroot "$root" apt-get -q update
  chroot "$root" apt-get -q -y -o Dpkg::Options::=--force-confdef dist-upgrade
  chroot "$root" apt-get -q -y install "$@"
  chroot "$root" apt-get clean
' sh "$root" "$CACHE_DIR/apt-archives" $pkgs >"$root.apt.log" 2>&1 || {
  tail -30 "$root.apt.log" >&2; die "apt-get failed (log: $root.apt.log)"; }
rm -f "$root.apt.log"
rm -f "$root/etc/resolv.conf"
step "base: done ($(du -sh "$root" | cut -f1))"
