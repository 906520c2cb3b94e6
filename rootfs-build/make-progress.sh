#!/bin/sh
# make's output on stdin through make-progress.awk: every line to stdout (the build log), a
# moving progress line on stderr when the first argument is 1 (see make-progress.awk).
# Usage: make ... 2>&1 | make-progress.sh TTY TOTAL LABEL [SETTLE] >>build.log
# mawk reads a pipe a whole buffer at a time (minutes of make output) unless interactive.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
case $(awk -W version 2>&1 | sed -n 1p) in
  mawk*) exec awk -W interactive -v tty="$1" -v total="$2" -v label="$3" -v settle="${4:-10}" -f "$here/make-progress.awk" ;;
  *) exec awk -v tty="$1" -v total="$2" -v label="$3" -v settle="${4:-10}" -f "$here/make-progress.awk" ;;
esac
