#!/bin/sh
# The test command: install what is needed, then run every test (unit, integration as
# root, image and QEMU end-to-end). Arguments go to pytest, e.g. `scripts/test.sh tests/unit`.
set -eu
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/lib.sh
exec "$VENV/bin/python" -m pytest -ra "$@"
