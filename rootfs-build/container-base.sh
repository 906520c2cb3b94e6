#!/bin/sh
# The `debian:bookworm` image Dockerfile.build starts FROM, made locally for machines
# that reach a Debian mirror but no container registry: `debootstrap --variant=minbase
# bookworm` from the machine's mirror, apt sources naming the machine's mirrors (the
# build in the container then fetches the very package versions a build on this host
# does), then `podman import`. Skipped when the tag exists (--force: rebuild).
#
# Usage: container-base.sh [--tag debian:bookworm] [--engine podman|docker] [--force]
# Prints the tag as the last stdout line.
set -eu
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
tag=debian:bookworm engine=podman force=
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
command -v "$engine" >/dev/null || die "$engine is missing"
command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/setup.sh installs it)"
if [ -z "$force" ] && "$engine" image inspect "$tag" >/dev/null 2>&1; then
  step "container base: $tag exists"
  echo "$tag"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "container-base.sh needs root (debootstrap)"
mirror=$(debian_mirror)
security=$(debian_security_mirror)
mkdir -p "$CACHE_DIR/tmp" "$CACHE_DIR/debs"
work=$(mktemp -d "$CACHE_DIR/tmp/container-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
step "container base: debootstrap --variant=minbase bookworm from $mirror"
debootstrap --variant=minbase --components=main --cache-dir="$CACHE_DIR/debs" \
  bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
{
  printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
  printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  if [ -n "$security" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$security"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  fi
} >"$work/root/etc/apt/sources.list.d/debian.sources"
rm -f "$work/root/etc/apt/sources.list" "$work/root/etc/resolv.conf" "$work/root/etc/hostname"
rm -rf "$work/root/var/lib/apt/lists"/* "$work/root/var/cache/apt"/*.bin
step "container base: $engine import as $tag"
tar -C "$work/root" --numeric-owner -cf - . | "$engine" import -q \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
step "container base: done"
echo "$tag"
