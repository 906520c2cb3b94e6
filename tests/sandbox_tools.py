"""Test tools around the sandbox (runtime/aleph_runtime/host/machines/sandbox.py): reading a
file back from a volume image, and running any command as PID 1 of a sandbox by hand.

    python -m tests.sandbox_tools --volume vdc=/tmp/data.ext4 -- python3 init/init1.py
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence

from aleph_runtime.host.machines.sandbox import Sandbox


def read_from_image(image: str | os.PathLike, path: str, fstype: str | None = None) -> bytes:
    """A file's content from a filesystem image, mounted read-only in a throwaway mount
    namespace (nothing stays mounted on the machine)."""
    # The mount dies with the namespace; the mount point is ours to remove.
    fstype_option = f"-t {shlex.quote(fstype)} " if fstype else ""
    script = (
        'd=$(mktemp -d) || exit 1; trap \'umount "$d" 2>/dev/null; rmdir "$d"\' EXIT; '
        f'mount {fstype_option}-o ro "$1" "$d" && cat "$d$2"'
    )
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            script,
            "sh",
            os.fspath(image),
            path,
        ],
        capture_output=True,
    )
    if result.returncode != 0:
        raise FileNotFoundError(f"{path} in {image}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.sandbox_tools [--veth] [--volume vdc=IMAGE[:ro]] [--bind PATH] -- COMMAND...`

    Runs COMMAND as PID 1 of a sandbox until it exits (or Ctrl-C), then cleans up.
    The dev-mode vsock base path is printed and exported to COMMAND as ALEPH_VSOCK_UDS.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="aleph-sandbox", description=main.__doc__)
    parser.add_argument("--veth", action="store_true", help="give the sandbox an eth0 (veth pair)")
    parser.add_argument("--volume", action="append", default=[], metavar="vdX=IMAGE[:ro]")
    parser.add_argument("--bind", action="append", default=[], metavar="PATH")
    parser.add_argument("--cwd", default="/")
    parser.add_argument("command", nargs="+")
    arguments = parser.parse_args(argv)
    volumes = dict(item.split("=", 1) for item in arguments.volume)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for name in ("PYTHONPATH", "ALEPH_LOG_LEVEL", "TERM", "LANG"):
        if name in os.environ:
            env[name] = os.environ[name]
    box = Sandbox(arguments.command, env=env, cwd=arguments.cwd, volumes=volumes, veth=arguments.veth,
                  binds=arguments.bind)  # fmt: skip
    box.env["ALEPH_VSOCK_UDS"] = box.base
    print(f"sandbox: vsock base {box.base}", flush=True)
    with box:
        try:
            return box.wait()
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
