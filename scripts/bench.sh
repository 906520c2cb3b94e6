#!/bin/sh
# Benchmarks, printed as JSON. `scripts/bench.sh` (or `dev`): the init as a local
# process against a bare asyncio server. `scripts/bench.sh vm [options]`: boot the
# runtime image in QEMU (see scripts/bench_vm.py). `scripts/bench.sh reload`: an author's
# loop with `aleph-runtime run` (edit to live under --watch, crash to the next 200).
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ -x "$VENV/bin/python" ] || scripts/setup.sh >&2
mode=${1:-dev}
[ $# -gt 0 ] && shift
case "$mode" in
  dev) exec "$VENV/bin/python" scripts/bench_dev.py "$@" ;;
  vm) exec "$VENV/bin/python" scripts/bench_vm.py "$@" ;;
  reload) exec "$VENV/bin/python" scripts/bench_reload.py "$@" ;;
  *) echo "usage: scripts/bench.sh [dev|vm|reload] [options]" >&2; exit 2 ;;
esac
