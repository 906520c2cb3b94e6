"""Shared by every test: the checkout's package on sys.path, and the root/skip rules."""

import os
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "runtime"))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, loop devices, mounts); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
