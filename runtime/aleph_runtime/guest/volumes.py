"""The program's volumes: block devices mounted with mount(2), no `mount` binary.

The filesystem is told from the device's superblock, not assumed from `read_only`:
read-only volumes are squashfs images and writable ones ext4 in practice, but a
program's volume is whatever the user built. At halt every volume is synced and
unmounted, in reverse order, before the init answers STOPZ.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
from collections.abc import Sequence

from aleph_runtime.guest import linux
from aleph_runtime.guest.config import ConfigError, Volume
from aleph_runtime.guest.record import Record

logger = logging.getLogger(__name__)

# ext2/3/4 superblock: at byte 1024; s_magic at +56, feature words at +92/+96/+100.
_EXT_SUPERBLOCK = 1024
_EXT_MAGIC = 0xEF53
_EXT3_COMPAT_HAS_JOURNAL = 0x4
# Incompat features ext3 does not know: extents, 64bit, mmp, flex_bg, ea_inode, dirdata,
# csum_seed, large_dir, inline_data, encrypt, casefold.
_EXT4_INCOMPAT = 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000
# Read-only-compat features of ext4: huge_file, gdt_csum, dir_nlink, extra_isize,
# quota, bigalloc, metadata_csum, readonly, project, verity.
_EXT4_RO_COMPAT = 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x8000
_EXT3_INCOMPAT_JOURNAL_DEV = 0x8


def detect_filesystem(device_path: str | os.PathLike) -> str | None:
    """The filesystem type on a device or image, from its superblock; None when unknown.

    Knows squashfs, ext2/ext3/ext4, erofs, xfs and btrfs. Raises OSError when the
    device cannot be read.
    """
    with open(device_path, "rb", buffering=0) as device:
        head = device.read(4096)
        if head[:4] == b"hsqs":
            return "squashfs"
        if head[:4] == b"XFSB":
            return "xfs"
        if len(head) >= _EXT_SUPERBLOCK + 104:
            (magic,) = struct.unpack_from("<H", head, _EXT_SUPERBLOCK + 56)
            if magic == _EXT_MAGIC:
                compat, incompat, ro_compat = struct.unpack_from("<III", head, _EXT_SUPERBLOCK + 92)
                if incompat & _EXT3_INCOMPAT_JOURNAL_DEV:
                    return None  # an external journal, not a filesystem to mount
                if incompat & _EXT4_INCOMPAT or ro_compat & _EXT4_RO_COMPAT:
                    return "ext4"
                return "ext3" if compat & _EXT3_COMPAT_HAS_JOURNAL else "ext2"
        if (
            len(head) >= _EXT_SUPERBLOCK + 4
            and head[_EXT_SUPERBLOCK : _EXT_SUPERBLOCK + 4] == b"\xe2\xe1\xf5\xe0"
        ):
            return "erofs"
        device.seek(0x10040)
        if device.read(8) == b"_BHRfS_M":
            return "btrfs"
    return None


class MountedVolume(Record):
    __slots__ = ("device_path", "fstype", "mount_point", "read_only", "volume")

    def __init__(self, volume: Volume, device_path: str, mount_point: str, fstype: str, read_only: bool):
        self._fill(locals())

    volume: Volume
    device_path: str
    mount_point: str
    fstype: str
    read_only: bool


def _mount_one(volume: Volume, dev_dir: str) -> MountedVolume:
    where = f"the volume {volume.mount!r} (device {volume.device!r})"
    device_path = os.path.join(dev_dir, volume.device)
    if not os.path.exists(device_path):
        if _is_mount_point(volume.mount):
            # Dev mode's container: no block device, the host bound the volume's directory here.
            logger.info("%s is already mounted on %s (by the host: dev mode)", where, volume.mount)
            return MountedVolume(volume, device_path, volume.mount, "bind", volume.read_only)
        raise ConfigError(f"{where} cannot be mounted: {device_path} does not exist")
    try:
        fstype = detect_filesystem(device_path)
    except OSError as error:
        raise ConfigError(
            f"{where} cannot be mounted: {device_path} cannot be read ({error.strerror})"
        ) from None
    if fstype is None:
        raise ConfigError(f"{where} cannot be mounted: no known filesystem on {device_path}")
    read_only = volume.read_only or fstype in ("squashfs", "erofs")
    if read_only and not volume.read_only:
        logger.warning("%s is %s, which is read-only: mounted read-only", where, fstype)
    try:
        os.makedirs(volume.mount, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"{where} cannot be mounted: {volume.mount} cannot be created ({error.strerror})"
        ) from None
    flags = linux.MS_RDONLY if read_only else 0
    try:
        linux.mount(device_path, volume.mount, fstype, flags)
    except OSError as error:
        if fstype in ("ext2", "ext3") and error.errno == errno.ENODEV:
            # Kernels without the ext2/ext3 drivers mount them with ext4's.
            fstype = "ext4"
            try:
                linux.mount(device_path, volume.mount, fstype, flags)
            except OSError as retry_error:
                error = retry_error
            else:
                error = None
        if error is not None:
            raise ConfigError(
                f"{where} cannot be mounted: mounting {device_path} ({fstype}) on {volume.mount} failed "
                f"({error.strerror})"
            ) from None
    logger.info("mounted %s (%s%s) on %s", device_path, fstype, ", ro" if read_only else "", volume.mount)
    return MountedVolume(volume, device_path, volume.mount, fstype, read_only)


def _is_mount_point(path: str) -> bool:
    """`path` is where something is mounted (/proc/self/mountinfo: a bind of a directory of
    the same filesystem as its parent's shows there, not in st_dev)."""
    try:
        with open("/proc/self/mountinfo", "rb") as mountinfo:
            points = {line.split()[4] for line in mountinfo if len(line.split()) > 4}
    except OSError:
        return False
    # Spaces, tabs, newlines and backslashes are octal escapes there.
    escaped = os.path.normpath(path).encode().replace(b"\\", b"\\134")
    for char in b" \t\n":
        escaped = escaped.replace(bytes([char]), b"\\%03o" % char)
    return escaped in points


def mount_volumes(volumes: Sequence[Volume], dev_dir: str = "/dev") -> list[MountedVolume]:
    """Mount each volume in order; read-only ones read-only. A volume that cannot be
    mounted raises ConfigError naming it, after unmounting those mounted before it."""
    mounted: list[MountedVolume] = []
    try:
        for volume in volumes:
            mounted.append(_mount_one(volume, dev_dir))
    except BaseException:
        unmount_volumes(mounted)
        raise
    return mounted


def unmount_volumes(mounted: Sequence[MountedVolume], busy_timeout: float = 0.5) -> None:
    """sync, then unmount in reverse order. Never raises: failures are logged.

    A busy volume (a file still open, e.g. by an exiting process) is retried while the
    `busy_timeout` budget lasts (shared by all volumes: halt has 5 s in all), then
    remounted read-only (which flushes it and marks it clean) and detached. Whatever
    happens, everything written before is on the device: sync() comes first.
    """
    try:
        linux.sync()
    except Exception:
        logger.exception("sync failed")
    deadline = time.monotonic() + busy_timeout
    for volume in reversed(mounted):
        try:
            _unmount_one(volume, deadline)
        except Exception:
            logger.exception("unmounting %s failed", volume.mount_point)


def _unmount_one(volume: MountedVolume, deadline: float) -> None:
    delay = 0.01
    while True:
        try:
            linux.umount(volume.mount_point)
        except OSError as error:
            if error.errno == errno.EINVAL:
                logger.warning("%s was not mounted any more", volume.mount_point)
                return
            if error.errno != errno.EBUSY or time.monotonic() >= deadline:
                last = error
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        else:
            logger.info("unmounted %s", volume.mount_point)
            return
    logger.error("cannot unmount %s: %s", volume.mount_point, last.strerror)
    if not volume.read_only:
        try:
            linux.mount(None, volume.mount_point, None, linux.MS_REMOUNT | linux.MS_RDONLY)
            logger.info("remounted %s read-only", volume.mount_point)
        except OSError as error:
            logger.error("cannot remount %s read-only: %s", volume.mount_point, error.strerror)
    try:
        linux.umount(volume.mount_point, linux.MNT_DETACH)
        logger.info("detached %s", volume.mount_point)
    except OSError as error:
        logger.error("cannot detach %s: %s", volume.mount_point, error.strerror)
