"""Helpers for the integration tests that run guest code as PID 1 of private namespaces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aleph_runtime.host.machines.sandbox import Sandbox

REPOSITORY = Path(__file__).resolve().parents[2]
INIT1 = REPOSITORY / "init" / "init1.py"


def guest_env(**extra: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": str(REPOSITORY / "runtime"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        **extra,
    }


def python_sandbox(code: str, **kwargs) -> Sandbox:
    """A sandbox whose PID 1 runs `code` with the test's Python and the checkout's package."""
    kwargs.setdefault("env", guest_env())
    kwargs.setdefault("binds", [REPOSITORY])
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return Sandbox([sys.executable, "-c", code], **kwargs)


def run_python(code: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    box = python_sandbox(code, **kwargs)
    box.start()
    try:
        stdout, stderr = box.process.communicate(timeout=timeout)
    finally:
        box.stop()
    return subprocess.CompletedProcess(box.process.args, box.returncode, stdout.decode(), stderr.decode())


def make_ext4(path: Path, files: dict[str, bytes] | None = None, size_mb: int = 16) -> Path:
    source = None
    if files:
        source = path.with_suffix(".d")
        for name, content in files.items():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes(content)
    with open(path, "wb") as image:
        image.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", *(["-d", str(source)] if source else []), str(path)], check=True)
    return path


def make_squashfs(path: Path, files: dict[str, bytes]) -> Path:
    source = path.with_suffix(".d")
    for name, content in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)
    subprocess.run(
        ["mksquashfs", str(source), str(path), "-noappend", "-quiet", "-all-root"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


def host_file_snapshot() -> dict[str, bytes | None]:
    """The machine's files that an init would write if a sandbox leaked."""
    snapshot = {}
    for path in ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts", "/root/.ssh/authorized_keys"):
        try:
            snapshot[path] = Path(path).read_bytes()
        except OSError:
            snapshot[path] = None
    snapshot["/data exists"] = b"yes" if os.path.exists("/data") else None
    return snapshot
