"""The container's root: the runtime image, unpacked once into a tree its root owns.

Dev mode boots the same squashfs as `--mode vm` (same `--profile`). A squashfs cannot be
mounted inside a user namespace (the kernel mounts no block filesystem there), and files
owned by an ID the namespace does not map are read-only to its root (no copy-up, no
/etc/resolv.conf), so the image is unpacked once with unsquashfs and its owners shifted
into the IDs the container maps (`IdMap`): the host's root maps the container's 0-65535 to
an unused range (`ROOT_ID_BASE`...); a user maps only themselves, so the tree is theirs.

The tree is cached by the image's sha256 and the mapping, under the cache directory
(`dev-rootfs/<sha256>-<ids>`), with a completion marker; it is unpacked beside it and
renamed into place, so a half-unpacked tree is never used and two first runs do not clash.
Each use touches the marker; a tree unused for `UNUSED_DAYS` is removed when another is
unpacked (images are rebuilt as the checkout changes: each would stay, 400 MB apiece).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aleph_runtime.host.errors import NodeError, SetupError

#: Where the host's root maps the container's IDs 0-65535: far above any account or
#: /etc/subuid range useradd hands out (100000 + 65536 n), so nothing on the host shares them.
ROOT_ID_BASE = 1_000_000_000
#: IDs a container maps when started by root: 0-65535, as a Debian system has.
ROOT_ID_COUNT = 65536
#: Marks a complete tree; its content is the image's sha256, its mtime the last use.
COMPLETE = ".aleph-complete"
#: A tree not used for this long goes when another is unpacked.
UNUSED_DAYS = 3


@dataclass(frozen=True)
class IdMap:
    """The container's IDs 0..count-1 are the host's uid..uid+count-1 (and gid...)."""

    uid: int
    gid: int
    count: int

    @classmethod
    def for_caller(cls) -> IdMap:
        """As root, a private range; as a user, that user alone (their files, their processes)."""
        if os.geteuid() == 0:
            return cls(ROOT_ID_BASE, ROOT_ID_BASE, ROOT_ID_COUNT)
        return cls(os.geteuid(), os.getegid(), 1)

    @classmethod
    def host_root(cls) -> IdMap:
        """No user namespace (root only, where the kernel refuses one): the image's own IDs."""
        return cls(0, 0, ROOT_ID_COUNT)

    @property
    def key(self) -> str:
        return f"{self.uid}.{self.gid}.{self.count}"

    def host_uid(self, uid: int) -> int:
        """The host's uid for the container's `uid` (its root when not mapped)."""
        return self.uid + (uid if uid < self.count else 0)

    def host_gid(self, gid: int) -> int:
        return self.gid + (gid if gid < self.count else 0)


def give(directory: Path, ids: IdMap) -> None:
    """`directory` (and what it holds) owned by the container's root, who writes it: the
    host's root's files shifted into the container's range (a user's own files already are
    theirs, and a user can give nothing)."""
    if os.geteuid() != 0 or directory.stat().st_uid == ids.uid:
        return
    for parent, dirnames, filenames in os.walk(directory):
        for name in (parent, *(os.path.join(parent, n) for n in (*dirnames, *filenames))):
            info = os.lstat(name)
            os.lchown(name, ids.host_uid(info.st_uid), ids.host_gid(info.st_gid))


def cache_root() -> Path:
    """The image cache (the runtime's, as root; the user's own cache otherwise)."""
    if os.geteuid() == 0:
        from aleph_runtime.host.vmm.image import cache_dir

        return cache_dir() / "dev-rootfs"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aleph-runtime" / "dev-rootfs"


def image_sha256(image: Path) -> str:
    """The image's sha256 from its manifest (written by build-rootfs.sh); hashed when absent."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        manifest = json.loads((image.parent / "manifest.json").read_text())
        if manifest.get("size") == image.stat().st_size:
            return str(manifest["sha256"])
    import hashlib

    with open(image, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def image_tree(image: Path, ids: IdMap, cache: Path | None = None, progress=None) -> Path:
    """The image unpacked, owned as `ids` maps it; unpacked on first use, then reused.

    Raises SetupError when unsquashfs is missing, NodeError when the image cannot be read.
    """
    image = Path(image)
    if not image.is_file():
        raise NodeError(f"the runtime image {image} does not exist: build it with "
                        "rootfs-build/build-rootfs.sh (or run once with --mode vm)")  # fmt: skip
    sha = image_sha256(image)
    cache = Path(cache) if cache is not None else cache_root()
    tree = cache / f"{sha[:32]}-{ids.key}"
    marker = tree / COMPLETE
    with contextlib.suppress(OSError):
        if marker.read_text() == sha:
            os.utime(marker)
            return tree
    if shutil.which("unsquashfs") is None:
        raise SetupError("unsquashfs is not installed: install squashfs-tools (scripts/setup.sh does)")
    if progress is not None:
        progress(f"unpacking the runtime image {image} for dev mode (once: cached by its sha256)")
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{tree.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _unpack(image, partial)
        if os.geteuid() == 0 and (ids.uid, ids.gid) != (0, 0):
            shift_owners(partial, ids)
        (partial / COMPLETE).write_text(sha)
        try:
            partial.rename(tree)
        except OSError:
            # Another run finished first (or an incomplete tree is in the way): theirs, or ours.
            with contextlib.suppress(OSError):
                if marker.read_text() == sha:
                    shutil.rmtree(partial, ignore_errors=True)
                    return tree
            shutil.rmtree(tree, ignore_errors=True)
            partial.rename(tree)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    prune(cache, keep=tree)
    return tree


def prune(cache: Path, keep: Path, unused_days: float = UNUSED_DAYS) -> list[Path]:
    """Remove the trees (and abandoned partial ones) not used for `unused_days`; the removed."""
    import time

    cutoff = time.time() - unused_days * 86400
    removed = []
    for path in cache.iterdir():
        if path == keep or not path.is_dir() or path.name == ".mnt":
            continue
        stamp = path / COMPLETE if (path / COMPLETE).exists() else path
        with contextlib.suppress(OSError):
            if stamp.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def unsquash(image: Path, target: Path, *, ignore_errors: bool = False) -> str | None:
    """`image` unpacked into `target` (a new directory); None, or unsquashfs's last error line.
    With `ignore_errors`, unsquashfs goes on past a file it cannot make (a user cannot make
    a device node). No xattrs: security.capability would name the host's root."""
    command = ["unsquashfs", "-no-progress", "-quiet", "-no-xattrs", "-d", str(target), str(image)]
    if ignore_errors:
        command[1:1] = ["-ignore-errors"]
    try:
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise SetupError(
            "unsquashfs is not installed: install squashfs-tools (scripts/setup.sh does)"
        ) from None
    if result.returncode == 0:
        return None
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"unsquashfs exited with status {result.returncode}"


def _unpack(image: Path, target: Path) -> None:
    # Device nodes in the image (none are needed: /dev is the container's own) cannot be made by a user.
    error = unsquash(image, target, ignore_errors=os.geteuid() != 0)
    if error is not None and not (target / "usr").is_dir():
        raise NodeError(f"the runtime image {image} could not be unpacked ({error}): "
                        "rebuild it with rootfs-build/build-rootfs.sh --force")  # fmt: skip


def shift_owners(tree: Path, ids: IdMap) -> None:
    """Every file's owner and group moved into the container's range (as root).

    chown clears set-user-ID and set-group-ID bits: they are set again after it.
    """
    for directory, dirnames, filenames in os.walk(tree):
        for name in (directory, *(os.path.join(directory, n) for n in (*dirnames, *filenames))):
            info = os.lstat(name)
            os.lchown(name, ids.host_uid(info.st_uid), ids.host_gid(info.st_gid))
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(name, stat.S_IMODE(info.st_mode))


def cached_images(profile: str, runtime: str | None = None) -> list[Path]:
    """The complete images of `runtime` (default debian-12) and `profile` in the image
    cache, newest first.

    The manifest says which (the directory's name, `<runtime>-<profile>-<comp>-<key>`, is
    not parsed); an image whose manifest names no runtime predates them, with another
    library layout, and is skipped.
    """
    from aleph_runtime.host.vmm.image import DEFAULT_RUNTIME, cache_dir

    runtime = runtime or DEFAULT_RUNTIME
    found = []
    for marker in (cache_dir() / "rootfs").glob("*/.complete"):
        image = marker.parent / "rootfs.squashfs"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            manifest = json.loads((marker.parent / "manifest.json").read_text())
            if manifest.get("profile") == profile and manifest.get("runtime") == runtime and image.is_file():
                found.append((marker.stat().st_mtime, image))
    return [image for _, image in sorted(found, reverse=True)]


def dev_image(profile: str = "lean", runtime: str | None = None, progress=None) -> Path:
    """The runtime squashfs dev mode runs: $ALEPH_ROOTFS unless a `runtime` is named; else
    the newest image of `runtime` (default debian-12) and `profile` in the image cache (dev
    mode binds the checkout's init over the image's, so an image built from an older init
    serves); else the image built through the cache (the first time: minutes, its progress
    shown). An unknown runtime raises ValueError naming the known ones."""
    from aleph_runtime.host.vmm import image

    override = os.environ.get("ALEPH_ROOTFS")
    if override and runtime is None:
        return Path(override)
    runtime = image.check_runtime(runtime or image.DEFAULT_RUNTIME)
    found = cached_images(profile, runtime)
    if found:
        return found[0]
    if progress is not None:
        progress(f"building the {runtime} {profile} runtime image (once: minutes; cached)")
    try:
        return image.ensure_rootfs(profile, runtime=runtime)
    except image.BuildError as error:
        raise NodeError(f"the {runtime} {profile} runtime image could not be built: {error}") from None
