# Shared by the scripts/ entry points: where things live, and stamp files that let a
# stage be skipped when its inputs did not change.
CACHE_DIR=${ALEPH_RUNTIME_CACHE:-/var/cache/aleph-runtime}
VENV=${ALEPH_RUNTIME_VENV:-$CACHE_DIR/venv}
mkdir -p "$CACHE_DIR"

step() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

_stamp_hash() { printf '%s' "$1" | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$CACHE_DIR/stamp.$1" ] && [ "$(cat "$CACHE_DIR/stamp.$1")" = "$(_stamp_hash "$2")" ]; }
stamp_set() { _stamp_hash "$2" >"$CACHE_DIR/stamp.$1"; }
