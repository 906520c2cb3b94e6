#!/bin/sh
# An "executable" program: the init starts this entrypoint and forwards every request
# to whatever listens on 127.0.0.1:8080. Any language works; here, Python's standard
# library only, so the runtime image needs nothing more.
cd "$(dirname "$0")"
exec python3 server.py
