"""SSH setup into a scratch root: key files and modes, host keys generated in the background."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from aleph_runtime.guest import ssh

KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA1 one@test",
    "  ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA2 two@test  ",
    "",
]


def test_authorized_keys_written_with_modes(tmp_path):
    path = ssh.write_authorized_keys(KEYS, str(tmp_path))
    assert path == str(tmp_path / "root" / ".ssh" / "authorized_keys")
    assert (tmp_path / "root/.ssh/authorized_keys").read_text().splitlines() == [KEYS[0], KEYS[1].strip()]
    assert stat.S_IMODE(os.stat(tmp_path / "root/.ssh").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_rewrite_fixes_modes(tmp_path):
    (tmp_path / "root/.ssh").mkdir(parents=True, mode=0o755)
    (tmp_path / "root/.ssh/authorized_keys").write_text("old\n")
    os.chmod(tmp_path / "root/.ssh/authorized_keys", 0o644)
    path = ssh.write_authorized_keys(KEYS[:1], str(tmp_path))
    assert Path(path).read_text() == KEYS[0] + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "root/.ssh").st_mode) == 0o700


def test_no_keys_does_nothing(tmp_path):
    ssh.setup_ssh([], str(tmp_path))
    assert not (tmp_path / "root").exists()
    assert ssh.sshd_process() is None


def test_host_keys_generated_in_the_background(tmp_path):
    # A stand-in for sshd that records its arguments: the machine's sshd is not ours to start.
    fake_sshd = tmp_path / "fake-sshd"
    fake_sshd.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sshd-args\n')
    fake_sshd.chmod(0o755)
    started = time.monotonic()
    ssh.setup_ssh(KEYS, str(tmp_path), sshd=str(fake_sshd))
    assert time.monotonic() - started < 2, "setup_ssh must not wait for key generation"
    process = ssh.sshd_process()
    assert process is not None
    assert process.wait(timeout=60) == 0
    assert ssh.has_host_keys(str(tmp_path))
    args = (tmp_path / "sshd-args").read_text().split()
    assert args[:2] == ["-D", "-e"]
    assert f"{tmp_path}/etc/ssh/ssh_host_ed25519_key" in args
    assert f"AuthorizedKeysFile={tmp_path}/root/.ssh/authorized_keys" in args
    assert stat.S_IMODE(os.stat(tmp_path / "etc/ssh/ssh_host_ed25519_key").st_mode) == 0o600
    ssh.stop_ssh()
