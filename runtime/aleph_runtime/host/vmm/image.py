"""The runtime image and the test kernel, built on demand through their caches.

A thin layer over the shell scripts in `rootfs-build/`, which stay the single source of
truth (CI, Dockerfile.build and developers run them directly): each function runs its
script, which returns at once when a complete result for the same inputs is already in
the cache (`$ALEPH_RUNTIME_CACHE`, default /var/cache/aleph-runtime), and otherwise
builds it, printing its progress on stderr. Shared by the tests, the QEMU launcher and
the CLI.

    from aleph_runtime.host.vmm import image
    node = image.ensure_node_kernel()         # NodeKernel(vmlinux, config, directory)
    kernel = image.ensure_kernel()            # KernelFiles(vmlinuz, initramfs, directory)
    rootfs = image.ensure_rootfs()            # Path to rootfs.squashfs (debian-12, lean, lz4)
    rootfs = image.ensure_rootfs(runtime="debian-13")  # Debian 13, Python 3.13
    manifest = image.read_manifest(rootfs)    # dict: sha256, size, packages, ...

Building needs root (debootstrap, chroot, loop-free mounts in a private namespace) and
the Debian tools scripts/setup.sh installs; using a cached result does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

REPO_DIR = Path(__file__).resolve().parents[4]
BUILD_DIR = REPO_DIR / "rootfs-build"

PROFILES = ("lean", "full")
#: The runtimes an image is built for (rootfs-build/common.sh's RUNTIMES): "debian-12",
#: the network's (Debian 12, Python 3.11, the official image's library pins), and
#: "debian-13", ahead of it (Debian 13, Python 3.13, the newest libraries).
RUNTIMES = ("debian-12", "debian-13")
DEFAULT_RUNTIME = "debian-12"
COMPRESSIONS = ("lz4", "gzip", "zstd", "xz", "lzo")
#: The runtime image's: lz4 decompresses several times faster than gzip, and a cold
#: start waits on the squashfs reads (QEMU under TCG, same image content: ready 0.8 s
#: and the first response 1 s sooner than with gzip); the node's kernels read it.
DEFAULT_COMPRESSION = "lz4"

# Kernel command line for the test kernel. Production adds `pci=off nomodule`: the test
# kernel loads its drivers as modules from the initramfs, so neither may be passed here.
KERNEL_CMDLINE = "console=ttyS0 reboot=k panic=1 ro root=/dev/vda"


#: The kernels a VM can boot: "node", built like a node's (rootfs-build/build-node-kernel.sh:
#: everything built in, virtio-mmio, no initramfs), and "debian", Debian's cloud kernel
#: with a busybox initramfs loading its modules (rootfs-build/build-test-kernel.sh).
KERNELS = ("node", "debian")
DEFAULT_KERNEL = "node"


class BuildError(RuntimeError):
    """A build script failed; its stderr went to the progress stream."""


@dataclass(frozen=True)
class KernelFiles:
    vmlinuz: Path
    initramfs: Path
    directory: Path

    @property
    def info(self) -> dict[str, str]:
        """package, version, release and busybox version (kernel.txt)."""
        text = (self.directory / "kernel.txt").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    @property
    def modules(self) -> list[str]:
        """The modules the initramfs loads, in order."""
        return (self.directory / "modules.txt").read_text().split()


@dataclass(frozen=True)
class NodeKernel:
    vmlinux: Path
    directory: Path

    @property
    def config(self) -> dict[str, str]:
        """The built .config: {"CONFIG_X": "y", ...}; options not set are absent."""
        options = {}
        for line in (self.directory / "config").read_text().splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                name, value = line.split("=", 1)
                options[name] = value
        return options

    @property
    def info(self) -> dict[str, str]:
        """source, version, release, gcc and recipe (kernel.txt)."""
        text = (self.directory / "kernel.txt").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def cache_dir() -> Path:
    return Path(os.environ.get("ALEPH_RUNTIME_CACHE", "/var/cache/aleph-runtime"))


def _run(script: str, args: list[str], progress: TextIO | None, env: dict[str, str] | None) -> Path:
    """Run a build script; progress (its stderr) goes to `progress` (default: our
    stderr; None keeps it quiet unless it fails). Returns the directory it printed last.
    Its stderr is relayed as it comes, carriage returns included: when `progress` is a
    terminal the script is told (ALEPH_RUNTIME_PROGRESS=1) and draws its moving lines."""
    import codecs

    cmd = [str(BUILD_DIR / script), *args]
    stream = sys.stderr if progress is None else progress
    on_terminal = {"ALEPH_RUNTIME_PROGRESS": "1"} if getattr(stream, "isatty", bool)() else {}
    full_env = {**os.environ, **on_terminal, **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=REPO_DIR)
    assert proc.stderr is not None and proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    tail = ""
    while chunk := proc.stderr.read1(1 << 16):
        text = decoder.decode(chunk)
        tail = (tail + text)[-16384:]
        stream.write(text)
        stream.flush()
    out = proc.stdout.read().decode(errors="replace")
    if proc.wait() != 0:
        # The last lines as a terminal showed them: a moving line's last state only.
        lines = tail.replace("\x1b[K", "").split("\n")[-41:]
        shown = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines if line.strip()]
        raise BuildError(f"{script} {' '.join(args)} failed (exit {proc.returncode}):\n" + "\n".join(shown))
    lines = out.strip().splitlines()
    if not lines:
        raise BuildError(f"{script} printed no output directory")
    return Path(lines[-1])


def ensure_kernel(
    *, out: str | os.PathLike | None = None, force: bool = False, progress: TextIO | None = None
) -> KernelFiles:
    """The test kernel and initramfs (rootfs-build/build-test-kernel.sh), cached; with
    `out`, always built into that directory."""
    args = ["--force"] if force else []
    if out is not None:
        args += ["--out", str(out)]
    directory = _run("build-test-kernel.sh", args, progress, None)
    return KernelFiles(directory / "vmlinuz", directory / "initramfs.cpio.gz", directory)


def ensure_node_kernel(
    *, out: str | os.PathLike | None = None, force: bool = False, progress: TextIO | None = None
) -> NodeKernel:
    """The node-like kernel (rootfs-build/build-node-kernel.sh), cached; a cold build
    compiles Linux (tens of minutes on 2 cores). With `out`, always built there."""
    args = ["--force"] if force else []
    if out is not None:
        args += ["--out", str(out)]
    directory = _run("build-node-kernel.sh", args, progress, None)
    return NodeKernel(directory / "vmlinux", directory)


def check_runtime(runtime: str) -> str:
    """`runtime` itself if it is one of RUNTIMES; else ValueError naming them."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    return runtime


def ensure_rootfs(
    profile: str = "lean",
    compression: str = DEFAULT_COMPRESSION,
    *,
    runtime: str = DEFAULT_RUNTIME,
    level: int | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    rebuild_python: bool = False,
    source_date_epoch: int | None = None,
    cache: str | os.PathLike | None = None,
    progress: TextIO | None = None,
) -> Path:
    """The squashfs of `runtime` (rootfs-build/build-rootfs.sh); returns its path.

    With `out`, always builds into that directory (other stages still come from the
    cache unless `rebuild_python`); without, reuses the cached image for these inputs.
    The manifest is `manifest.json` beside the image (see `read_manifest`). `cache`
    replaces $ALEPH_RUNTIME_CACHE (an empty directory means a cold build).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: one of {PROFILES}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}: one of {COMPRESSIONS}")
    args = ["--runtime", check_runtime(runtime), "--profile", profile, "--compression", compression]
    if level is not None:
        args += ["--level", str(level)]
    if out is not None:
        args += ["--out", str(out)]
    if force:
        args.append("--force")
    if rebuild_python:
        args.append("--rebuild-python")
    env = {}
    if source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
    if cache is not None:
        env["ALEPH_RUNTIME_CACHE"] = str(cache)
    return _run("build-rootfs.sh", args, progress, env) / "rootfs.squashfs"


def update_init(
    profile: str = "lean",
    compression: str = DEFAULT_COMPRESSION,
    *,
    runtime: str = DEFAULT_RUNTIME,
    level: int | None = None,
    force: bool = False,
    progress: TextIO | None = None,
) -> Path:
    """Re-pack the image with the current init and aleph_runtime only (fast path: the
    last finished tree of the runtime and profile is reused; zstd level 3 packs it in
    seconds)."""
    args = ["--runtime", check_runtime(runtime), "--profile", profile, "--compression", compression]
    if level is not None:
        args += ["--level", str(level)]
    if force:
        args.append("--force")
    return _run("update-init.sh", args, progress, None) / "rootfs.squashfs"


def read_manifest(rootfs: str | os.PathLike) -> dict:
    """The manifest written beside an image: sha256, size, compression, runtime, profile,
    source_date_epoch, commit, python, debian_packages, python_packages (the programs',
    /opt/aleph/libs) and init_python_packages (the init's own, /opt/aleph/init-libs)."""
    return json.loads((Path(rootfs).parent / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> int:
    """`python -m aleph_runtime.host.vmm.image node-kernel|kernel|rootfs|update-init [profile] [compression] [runtime]`:
    build (or find in the cache) and print the paths."""
    argv = list(sys.argv[1:] if argv is None else argv)
    what = argv.pop(0) if argv else "rootfs"
    if what == "node-kernel":
        print(f"vmlinux={ensure_node_kernel().vmlinux}")
    elif what == "kernel":
        k = ensure_kernel()
        print(f"vmlinuz={k.vmlinuz}\ninitramfs={k.initramfs}")
    elif what in ("rootfs", "update-init"):
        profile = argv[0] if argv else "lean"
        compression = argv[1] if len(argv) > 1 else DEFAULT_COMPRESSION
        runtime = argv[2] if len(argv) > 2 else DEFAULT_RUNTIME
        fn = ensure_rootfs if what == "rootfs" else update_init
        print(fn(profile, compression, runtime=runtime))
    else:
        print(main.__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
