"""Persistent volumes as files in the state directory: an ext4 image for VMs, seeded from
the dev-mode directory of the same name when it is first created."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from aleph_runtime.host.node.inference import infer_program
from aleph_runtime.host.node.provision import NodeOptions, Provision
from aleph_runtime.host.node.volumes import parse_volume
from tests.cli.conftest import EXAMPLES

pytestmark = pytest.mark.skipif(
    shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None, reason="e2fsprogs is not installed"
)


def test_ext4_image_seeded_from_the_dev_directory(tmp_path):
    volume = parse_volume("mount=/var/lib/example,persistent=example,size=16M")
    provision = Provision(NodeOptions(infer_program(EXAMPLES / "hello"), [volume]), tmp_path, "0" * 64, print)
    directory = provision.persistent_path("example")
    directory.mkdir(parents=True)
    (directory / "counter.txt").write_text("41")
    image = provision.persistent_image(volume)
    assert image == tmp_path / "volumes" / "example.ext4"
    assert image.stat().st_size == 16 << 20
    seen = subprocess.run(["debugfs", "-R", "cat /counter.txt", str(image)], capture_output=True, text=True)
    assert seen.stdout == "41"
    # Created once: later runs keep the image (and what the VM wrote in it).
    (directory / "counter.txt").write_text("0")
    assert provision.persistent_image(volume) == image
    seen = subprocess.run(["debugfs", "-R", "cat /counter.txt", str(image)], capture_output=True, text=True)
    assert seen.stdout == "41"
