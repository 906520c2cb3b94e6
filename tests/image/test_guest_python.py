"""The guest's unit and integration tests under each runtime image's own Python
(scripts/test-guest.sh): 3.13 from the debian-13 image, 3.11 with the network's library
pins from the debian-12 one, each in a chroot of the image in a private mount namespace
(no interpreter download). The debian-13 run carries the `debian13` marker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.image, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]


def test_guest_tests_pass_under_the_runtime_python(runtime: str):
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts and chroot")
    result = subprocess.run(
        [str(REPO / "scripts/test-guest.sh"), "--runtime", runtime, "-q"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.splitlines()[-1], result.stdout[-2000:]
