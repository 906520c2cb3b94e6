#!/bin/sh
# The main job: install what is needed, then run a program locally as a compute node
# runs it and print its URL. Without arguments, the bundled FastAPI example in a VM;
# arguments go to `aleph-runtime run`, e.g. `scripts/run.sh ./my_app --mode dev`.
set -eu
caller=$(pwd)
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
. scripts/lib.sh
# Relative PATHs and volume sources are the caller's: run from where we were called.
cd "$caller"
exec "$VENV/bin/aleph-runtime" run "$@"
