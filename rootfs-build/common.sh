# Sourced by the rootfs-build/ scripts: cache location, step logging with timings,
# the Debian mirror, reproducible timestamps. POSIX sh.

CACHE_DIR=${ALEPH_RUNTIME_CACHE:-/var/cache/aleph-runtime}
BUILD_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$BUILD_DIR/.." && pwd)

# The runtimes an image can be built for, and the Debian suite of each.
RUNTIMES="debian-12 debian-13"
runtime_suite() {
  case $1 in
    debian-12) echo bookworm ;;
    debian-13) echo trixie ;;
    *) die "unknown runtime $1 (known: $(echo $RUNTIMES | sed 's/ /, /g'))" ;;
  esac
}

_t0=$(date +%s)
_tstep=$_t0
# Progress goes to stderr; stdout is kept for the one machine-readable result line.
step() {
  _now=$(date +%s)
  printf '[%s +%3ss] %s\n' "$(date -u +%H:%M:%S)" "$((_now - _t0))" "$*" >&2
  _tstep=$_now
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Serialise builds sharing the cache: hold an exclusive lock on fd 9 until exit.
lock() {
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/.lock-$1"
  if ! flock -n 9; then
    step "waiting for another $1 build to finish"
    flock 9
  fi
}

# sha256 of stdin, shortened: cache directory names.
short_hash() { sha256sum | cut -c1-16; }

# The Debian mirror this machine's apt already uses (APT_ETC: another /etc/apt, for tests) (deb822 .sources or one-line
# sources.list), unless DEBIAN_MIRROR says otherwise. Never a host name in the repo.
# Found by its bookworm entry; one archive serves every suite (trixie's too).
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  _m=$(
    for f in "${APT_ETC:-/etc/apt}"/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      # One stanza per paragraph: take the URIs of the one whose Suites name "bookworm".
      awk 'BEGIN{RS=""; FS="\n"} {u=""; s=""; for (i=1;i<=NF;i++) {
             if ($i ~ /^URIs:/) {u=$i; sub(/^URIs:[ \t]*/,"",u); sub(/[ \t].*/,"",u)}
             if ($i ~ /^Suites:/) s=" " $i " "}
           if (u != "" && s ~ /[ \t]bookworm[ \t]/) print u}' "$f"
    done
    for f in "${APT_ETC:-/etc/apt}"/sources.list "${APT_ETC:-/etc/apt}"/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      awk '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
           if ($(i+1)=="bookworm") print $i }' "$f"
    done
  )
  _m=$(echo "$_m" | sed -n 1p)
  [ -n "$_m" ] || die "no Debian bookworm mirror in /etc/apt sources; set DEBIAN_MIRROR"
  echo "$_m"
}

# SOURCE_DATE_EPOCH: the environment's, else the time of the last commit that touched
# the given paths (the build's inputs: other commits leave the cached results valid),
# else a fixed date (no git).
source_date_epoch() {
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then echo "$SOURCE_DATE_EPOCH"; return; fi
  _e=$(git -C "$REPO_DIR" log -1 --format=%ct -- "$@" 2>/dev/null) || _e=
  echo "${_e:-1700000000}"
}

# Candidate version of a Debian package from apt's lists ("" if unknown).
apt_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/{print $2; exit}'; }

# apt-get download into the current directory, quietly (root downloads unsandboxed).
apt_download() { apt-get download -q -o APT::Sandbox::User=root "$@" >/dev/null; }

# The Debian security mirror, likewise (DEBIAN_SECURITY_MIRROR; "" when none is known).
debian_security_mirror() {
  if [ -n "${DEBIAN_SECURITY_MIRROR+x}" ]; then echo "$DEBIAN_SECURITY_MIRROR"; return; fi
  {
    for f in "${APT_ETC:-/etc/apt}"/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk 'BEGIN{RS=""; FS="\n"} {u=""; s=""; for (i=1;i<=NF;i++) {
             if ($i ~ /^URIs:/) {u=$i; sub(/^URIs:[ \t]*/,"",u); sub(/[ \t].*/,"",u)}
             if ($i ~ /^Suites:/) s=" " $i " "}
           if (u != "" && s ~ /[ \t]bookworm-security[ \t]/) print u}' "$f"
    done
    for f in "${APT_ETC:-/etc/apt}"/sources.list "${APT_ETC:-/etc/apt}"/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      awk '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
           if ($(i+1)=="bookworm-security") print $i }' "$f"
    done
  } | sed -n 1p
}
