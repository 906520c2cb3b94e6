#!/bin/sh
# Build a runtime image: a reproducible Debian squashfs with Python, the programs'
# libraries under /opt/aleph/libs, our init's own under /opt/aleph/init-libs, and our
# init (init0.sh as /sbin/init, init1 and the guest side of aleph_runtime under
# /opt/aleph), everything byte-compiled ahead of time.
#
# Usage: build-rootfs.sh [--runtime debian-12|debian-13] [--profile lean|full]
#                        [--compression lz4|gzip|zstd|xz] [--level N]
#                        [--out DIR] [--force] [--rebuild-python] [--update-init]
#                        [--update-requirements]
#   --runtime        debian-12 (default): the network's runtime exactly (Debian 12,
#                    Python 3.11, the official image's library pins and its Debian
#                    python3-* packages); debian-13: Debian 13 and its Python 3.13 with
#                    the newest libraries that support it
#   --profile        lean (default): Python, SSH, iproute2, CA certificates;
#                    full: plus nodejs/npm, docker, build tools (packages-full.txt,
#                    and packages-full-RUNTIME.txt where there is one)
#   --compression    lz4 (default: the fastest to read, and a cold start reads ~100 MB
#                    of the image; aleph-vm's kernels and Debian's read it), gzip (any
#                    kernel with squashfs reads it), zstd (the smallest), xz, lzo
#   --level N        compression level; default 6 for gzip (level 9, mksquashfs's own
#                    default, is 4x slower for <1% smaller), 15 for zstd; zstd level 3
#                    packs in seconds (quick local iterations)
#   --out DIR        build into DIR (always builds); default: a cache directory keyed by
#                    a hash of every input, reused when it is complete
#   --force          rebuild even when the cached image is complete
#   --rebuild-python re-run pip instead of reusing the cached stage (reproducibility test)
#   --update-init    fast path: take the last finished tree of this profile, replace
#                    only the init and aleph_runtime in it, re-pack (update-init.sh)
#   --update-requirements  resolve requirements-RUNTIME.in and rewrite
#                    requirements-RUNTIME.txt
#
# Per runtime: packages-RUNTIME.txt (Debian packages of both profiles, if the file
# exists), requirements-RUNTIME.in/.txt (the programs' libraries, /opt/aleph/libs) and
# requirements-init-RUNTIME.txt (the init's own, /opt/aleph/init-libs, which a .pth file
# in Debian's dist-packages appends to sys.path: after everything else, so a program's
# imports resolve as on the network). See PACKAGES.md.
#
# Stages (each cached under $ALEPH_RUNTIME_CACHE/rootfs-stages, keyed by its inputs):
#   base    stage-base.sh: debootstrap minbase + Debian packages of the runtime and profile
#           (full: then stage-full.sh, the system setup today's image does at boot)
#   python  stage-python.sh, twice, with the image's pip: requirements-RUNTIME.txt into
#           /opt/aleph/libs, requirements-init-RUNTIME.txt into /opt/aleph/init-libs
# then, on a fresh copy, every time: init files, cleanup, timestamps set to
# SOURCE_DATE_EPOCH (the last commit's time), byte-compilation, mksquashfs, manifest.
# Output: DIR/rootfs.squashfs and DIR/manifest.json; the last stdout line is DIR.
set -eu
. "$(cd "$(dirname "$0")" && pwd)/common.sh"

runtime=debian-12 profile=lean comp=lz4 level= out= force= rebuild_python= update_init= update_reqs=
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) runtime=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --compression) comp=$2; shift 2 ;;
    --level) level=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --force) force=1; shift ;;
    --rebuild-python) rebuild_python=1; shift ;;
    --update-init) update_init=1; shift ;;
    --update-requirements) update_reqs=1; rebuild_python=1; shift ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
runtime_suite "$runtime" >/dev/null
case $profile in lean|full) ;; *) die "unknown profile $profile (lean, full)" ;; esac
case $comp in gzip|zstd|xz|lz4|lzo) ;; *) die "unknown compression $comp" ;; esac
case $comp:$level in gzip:) level=6 ;; zstd:) level=15 ;; xz:*|lz4:*) level= ;; esac
comp_opts="-comp $comp${level:+ -Xcompression-level $level}"
for tool in debootstrap mksquashfs unshare chroot; do
  command -v $tool >/dev/null || die "$tool is missing (scripts/setup.sh installs it)"
done

# (Pathspecs: the image's inputs only; docs, host-side code and tests do not count.)
epoch=$(source_date_epoch rootfs-build init runtime/aleph_runtime runtime/compat ':!rootfs-build/*.md' \
  ':!rootfs-build/build-test-kernel.sh' ':!rootfs-build/initramfs-init.sh' ':!runtime/aleph_runtime/host' \
  ':!rootfs-build/container-base.sh' ':!rootfs-build/containers.conf')
export SOURCE_DATE_EPOCH=$epoch
stages=$CACHE_DIR/rootfs-stages
mkdir -p "$stages" "$CACHE_DIR/tmp"

# Cache keys: a hash of each stage's inputs, chained.
base_key=$( { echo "$runtime $profile"; cat "$BUILD_DIR/stage-base.sh" "$BUILD_DIR/packages-lean.txt"
              [ ! -f "$BUILD_DIR/packages-$runtime.txt" ] || cat "$BUILD_DIR/packages-$runtime.txt"
              [ "$profile" = lean ] || cat "$BUILD_DIR/packages-$profile.txt" "$BUILD_DIR/stage-$profile.sh"
              [ "$profile" = lean ] || [ ! -f "$BUILD_DIR/packages-$profile-$runtime.txt" ] ||
                cat "$BUILD_DIR/packages-$profile-$runtime.txt"; } | short_hash)
reqs=$BUILD_DIR/requirements-$runtime.txt
[ -z "$update_reqs" ] || reqs=$BUILD_DIR/requirements-$runtime.in
init_reqs=$BUILD_DIR/requirements-init-$runtime.txt
[ -f "$reqs" ] && [ -f "$init_reqs" ] || die "missing $reqs or $init_reqs"
python_key=$( { echo "$base_key"; cat "$BUILD_DIR/stage-python.sh" "$reqs" "$init_reqs"; } | short_hash)
# The guest side of aleph_runtime: everything but host/ and bytecode; and compat/, the
# legacy aleph_client modules, which the init puts last on a program's sys.path.
runtime_files() {
  (cd "$REPO_DIR/runtime" && find aleph_runtime compat -path aleph_runtime/host -prune -o \
     -name __pycache__ -prune -o -type f -name '*.py' -print | LC_ALL=C sort)
}
init_files() { (cd "$REPO_DIR/init" && ls init0.sh init0.fstab *.py 2>/dev/null | LC_ALL=C sort); }
# What the profile adds to init0.fstab (full: dockerd's tmpfs); part of the final key.
profile_fstab=$REPO_DIR/init/init0-$profile.fstab
[ -f "$profile_fstab" ] || profile_fstab=
final_key=$( { echo "$python_key $comp $level $epoch"
               cat "$BUILD_DIR/build-rootfs.sh" "$BUILD_DIR/common.sh"
               for f in $(init_files); do echo "$f"; cat "$REPO_DIR/init/$f"; done
               [ -z "$profile_fstab" ] || cat "$profile_fstab"
               for f in $(runtime_files); do echo "$f"; cat "$REPO_DIR/runtime/$f"; done; } | short_hash)
tree=$stages/tree-$runtime-$profile

if [ -z "$out" ]; then
  out=$CACHE_DIR/rootfs/$runtime-$profile-$comp$level-$final_key
  if [ -z "$force" ] && [ -f "$out/.complete" ]; then
    step "rootfs: cached ($runtime, $profile, $comp) in $out"
    echo "$out"
    exit 0
  fi
fi
[ "$(id -u)" = 0 ] || die "build-rootfs.sh needs root (debootstrap, chroot, mounts)"
# One build at a time on a cache (stages and the kept tree are shared).
lock rootfs
step "rootfs: building the $runtime $profile image ($comp) into $out, SOURCE_DATE_EPOCH=$epoch"

work=$(mktemp -d "$CACHE_DIR/tmp/rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# Copy a cached directory tree (hard links would share inodes with the cache: no).
copy_tree() { mkdir -p "$2"; (cd "$1" && tar -cf - .) | (cd "$2" && tar -xpf -); }

if [ -n "$update_init" ] && [ -f "$tree.complete" ] && [ "$(cat "$tree.complete")" = "$python_key" ]; then
  step "rootfs: --update-init, reusing the finished tree $tree"
  rm -f "$tree.complete"
  mv "$tree" "$root"
  reuse_tree=1
else
  [ -z "$update_init" ] || step "rootfs: --update-init: no finished $runtime $profile tree for these inputs, full build"
  reuse_tree=
  base=$stages/base-$runtime-$profile-$base_key
  if [ ! -f "$base.complete" ]; then
    step "base: not in the cache: debootstrap and the $profile packages, the image's longest step (1-3 min, mostly downloads)"
    rm -rf "$base" "$base.new"
    "$BUILD_DIR/stage-base.sh" "$base.new" "$profile" "$runtime"
    [ "$profile" = lean ] || "$BUILD_DIR/stage-$profile.sh" "$base.new"
    mv "$base.new" "$base"
    touch "$base.complete"
  else
    step "base: cached ($base)"
  fi
  step "copying the base stage"
  copy_tree "$base" "$root"

  pylibs=$stages/python-$runtime-$profile-$python_key
  if [ -n "$rebuild_python" ] || [ ! -f "$pylibs.complete" ]; then
    step "python: not in the cache: pip installs the image's Python packages (about a minute, mostly downloads)"
    if [ -n "$update_reqs" ]; then
      "$BUILD_DIR/stage-python.sh" "$root" "$reqs" /opt/aleph/libs --resolve
    else
      "$BUILD_DIR/stage-python.sh" "$root" "$reqs" /opt/aleph/libs
    fi
    "$BUILD_DIR/stage-python.sh" "$root" "$init_reqs" /opt/aleph/init-libs
    rm -rf "$pylibs" "$pylibs.complete"
    copy_tree "$root/opt/aleph/libs" "$pylibs.new/libs"
    copy_tree "$root/opt/aleph/init-libs" "$pylibs.new/init-libs"
    mv "$pylibs.new" "$pylibs"
    touch "$pylibs.complete"
  else
    step "python: cached ($pylibs)"
    copy_tree "$pylibs/libs" "$root/opt/aleph/libs"
    copy_tree "$pylibs/init-libs" "$root/opt/aleph/init-libs"
  fi
fi

# name==version of every distribution installed in a directory, sorted.
distributions() {
  for m in "$1"/*.dist-info/METADATA; do
    awk -F': ' '{sub(/\r$/, "")} /^Name: /{n=$2} /^Version: /{v=$2} /^$/{exit} END{print n "==" v}' "$m"
  done | LC_ALL=C sort -f
}

if [ -n "$update_reqs" ]; then
  lock_file=$BUILD_DIR/requirements-$runtime.txt
  step "writing $(basename "$lock_file") from what pip resolved"
  {
    echo "# Every Python distribution in /opt/aleph/libs of the $runtime runtime, pinned: generated"
    echo "# by build-rootfs.sh --runtime $runtime --update-requirements from requirements-$runtime.in."
    echo "# Do not edit by hand."
    distributions "$root/opt/aleph/libs"
  } >"$lock_file"
  # Not cached under the lock's key: installed from the lock (--no-deps), the same
  # distributions differ in pip's markers (REQUESTED) and in which one's stray top-level
  # file wins; the next build installs them from the lock, as every later build does.
fi

step "installing the init and aleph_runtime (guest side) under /opt/aleph"
rm -rf "$root/opt/aleph/init" "$root/opt/aleph/runtime"
mkdir -p "$root/opt/aleph/init" "$root/opt/aleph/runtime"
for f in $(init_files); do
  case $f in *.sh|*.py) mode=0755 ;; *) mode=0644 ;; esac
  install -m $mode "$REPO_DIR/init/$f" "$root/opt/aleph/init/$f"
done
[ -z "$profile_fstab" ] || cat "$profile_fstab" >>"$root/opt/aleph/init/init0.fstab"
for f in $(runtime_files); do
  install -D -m 0644 "$REPO_DIR/runtime/$f" "$root/opt/aleph/runtime/$f"
done
# /sbin/init is init0.sh itself (the kernel runs it, so no symlink games).
install -m 0755 "$REPO_DIR/init/init0.sh" "$root/usr/sbin/init"
# The init's own libraries, last on every interpreter's sys.path (site.py appends the
# directories a .pth file names after the one holding it): a program imports the
# official image's libraries first, as there, and finds ours only where it has none.
printf '/opt/aleph/init-libs\n' >"$root/usr/lib/python3/dist-packages/zz-aleph-init-libs.pth"
mkdir -p "$root/opt/code" "$root/opt/packages" "$root/data" "$root/overlay" "$root/rom"

if [ -z "$reuse_tree" ]; then
  step "cleanup: docs, man pages, apt lists, caches, logs, machine-id, SSH host keys"
  rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/ssh"/ssh_host_*_key* \
    "$root/etc/machine-id" "$root/var/lib/dbus/machine-id" "$root/etc/hostname" \
    "$root/var/cache/ldconfig/aux-cache" "$root/var/lib/dpkg"/*-old \
    "$root/var/cache/debconf"/*-old "$root/etc/resolv.conf"
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian" \
    "$root/usr/share/groff" "$root/var/lib/apt/lists"/* "$root/var/cache/apt"/*.bin \
    "$root/var/cache/apt/archives"/*.deb "$root/var/cache/man" "$root/root/.cache"
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  find "$root/var/log" -type f -delete
  find "$root/tmp" "$root/var/tmp" -mindepth 1 -delete
  find "$root" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
  mkdir -p "$root/var/lib/apt/lists/partial"
  # The password change day in /etc/shadow is the build day: pin it to the epoch.
  days=$((epoch / 86400))
  awk -F: -v OFS=: -v d="$days" '$3 != "" {$3 = d} {print}' "$root/etc/shadow" >"$root/etc/shadow.new"
  chmod --reference="$root/etc/shadow" "$root/etc/shadow.new"
  chown --reference="$root/etc/shadow" "$root/etc/shadow.new"
  mv "$root/etc/shadow.new" "$root/etc/shadow"
  [ ! -f "$root/etc/shadow-" ] || rm -f "$root/etc/shadow-" "$root/etc/passwd-" "$root/etc/group-" "$root/etc/gshadow-"
  # An empty machine-id would make systemd-less tools think one exists: keep none.
fi

# Every timestamp to SOURCE_DATE_EPOCH, then bytecode for every .py at levels 0 and 2
# (-OO: the init's) with timestamp validation: the sources' mtimes in the image are the
# epoch (mksquashfs -all-time), so the headers match and nothing recompiles at boot.
python_version=$(chroot "$root" python3 -c 'import platform; print(platform.python_version())')
step "byte-compiling (levels 0 and 2) with the image's Python $python_version"
compile_dirs="/usr/lib/python${python_version%.*} /usr/lib/python3/dist-packages /opt/aleph"
if [ -n "$reuse_tree" ]; then
  compile_dirs="/opt/aleph/init /opt/aleph/runtime"
  find "$root/opt/aleph/init" "$root/opt/aleph/runtime" "$root/usr/sbin/init" -exec touch -h -d "@$epoch" {} +
else
  find "$root" -xdev -exec touch -h -d "@$epoch" {} +
fi
# shellcheck disable=SC2086
chroot "$root" env -i PATH=/usr/bin:/bin SOURCE_DATE_EPOCH="$epoch" python3 -m compileall -q -f \
  -j 2 --invalidation-mode timestamp -o 0 -o 2 -x '/lib2to3/tests/data/|/test/bad' $compile_dirs >"$work/compile.log" 2>&1 || {
  cat "$work/compile.log" >&2; die "byte-compilation failed"; }
find "$root" -xdev -newermt "@$epoch" -exec touch -h -d "@$epoch" {} +

step "mksquashfs ($comp_opts)"
mkdir -p "$out"
rm -f "$out/.complete" "$out/rootfs.squashfs" "$out/manifest.json"
env -u SOURCE_DATE_EPOCH mksquashfs "$root" "$out/rootfs.squashfs" -noappend $comp_opts -reproducible \
  -mkfs-time "$epoch" -all-time "$epoch" -processors 2 -quiet -no-progress >/dev/null

step "manifest"
sha=$(sha256sum "$out/rootfs.squashfs" | cut -d' ' -f1)
size=$(stat -c %s "$out/rootfs.squashfs")
commit=$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || echo unknown)
{
  printf '{\n  "image": "rootfs.squashfs",\n  "sha256": "%s",\n  "size": %s,\n' "$sha" "$size"
  printf '  "compression": "%s",\n  "compression_level": %s,\n  "runtime": "%s",\n  "profile": "%s",\n' \
    "$comp" "${level:-null}" "$runtime" "$profile"
  printf '  "source_date_epoch": %s,\n  "commit": "%s",\n' "$epoch" "$commit"
  printf '  "python": "%s",\n' "$python_version"
  printf '  "debian_packages": {\n'
  dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Package}\t${Version}\n' | LC_ALL=C sort |
    awk -F'\t' 'NR>1{printf ",\n"} {printf "    \"%s\": \"%s\"", $1, $2} END{printf "\n"}'
  # "python_packages": the programs' (/opt/aleph/libs); "init_python_packages": ours.
  printf '  },\n  "python_packages": {\n'
  distributions "$root/opt/aleph/libs" |
    awk -F'==' 'NR>1{printf ",\n"} {printf "    \"%s\": \"%s\"", $1, $2} END{printf "\n"}'
  printf '  },\n  "init_python_packages": {\n'
  distributions "$root/opt/aleph/init-libs" |
    awk -F'==' 'NR>1{printf ",\n"} {printf "    \"%s\": \"%s\"", $1, $2} END{printf "\n"}'
  printf '  }\n}\n'
} >"$out/manifest.json"
touch "$out/.complete"

# Keep the finished tree for --update-init (one per runtime and profile).
rm -rf "$tree" "$tree.complete"
mv "$root" "$tree"
echo "$python_key" >"$tree.complete"

step "rootfs: done, $(du -h "$out/rootfs.squashfs" | cut -f1) ($size bytes), sha256 $sha"
echo "$out"
