#!/usr/bin/python3 -OO
"""PID 1 of an aleph.im program VM (stage 1, started by init0.sh).

Run as `python3 -OO init1.py`. It finds the `aleph_runtime` package in `../runtime`
from its own directory: /opt/aleph/init/init1.py and /opt/aleph/runtime in the image,
init/ and runtime/ in a checkout.
Dev mode: `ALEPH_VSOCK_UDS=/run/x/v.sock python3 init/init1.py` (or `--uds PATH`).
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
# The program must not import from the init's own directory by accident.
if sys.path and os.path.abspath(sys.path[0]) == _here:
    del sys.path[0]
_runtime = os.path.normpath(os.path.join(_here, os.pardir, "runtime"))
if os.path.isdir(os.path.join(_runtime, "aleph_runtime")):
    sys.path.insert(0, _runtime)

from aleph_runtime.guest.main import main  # noqa: E402

main()
