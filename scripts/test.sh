#!/bin/sh
# The test command: install what is needed, lint (ruff, configured in pyproject.toml), then
# run every test (unit, integration as root, image and QEMU end-to-end). Arguments go to
# pytest, e.g. `scripts/test.sh tests/unit`.
set -eu
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/lib.sh
"$VENV/bin/ruff" check --quiet .
"$VENV/bin/ruff" format --check --quiet .
exec "$VENV/bin/python" -m pytest -ra "$@"
