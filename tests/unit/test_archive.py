"""Archive safety: hostile entries are refused and nothing lands outside the destination."""

import io
import stat
import tarfile
import zipfile

import pytest

from aleph_runtime.guest.archive import ArchiveError, extract_tar, extract_zip, tar_compression


def make_zip(entries):
    """entries: (name, data, unix mode or None)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def make_tar(members, compression=""):
    """members: (TarInfo, data or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tar_info(name, kind=tarfile.REGTYPE, linkname="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    return info


def assert_nothing_outside(tmp_path, dest):
    outside = [p for p in tmp_path.rglob("*") if dest not in p.parents and p != dest]
    assert outside == []


def test_zip_extracts_files_dirs_modes_and_inner_links(tmp_path):
    dest = tmp_path / "dest"
    data = make_zip(
        [
            ("pkg/", b"", stat.S_IFDIR | 0o755),
            ("pkg/main.py", b"x = 1", stat.S_IFREG | 0o644),
            ("run.sh", b"#!/bin/sh", stat.S_IFREG | 0o755),
            ("pkg/alias.py", b"main.py", stat.S_IFLNK | 0o777),
            ("no_mode.txt", b"plain", None),
        ]
    )
    extract_zip(data, dest)
    assert (dest / "pkg/main.py").read_bytes() == b"x = 1"
    assert (dest / "run.sh").stat().st_mode & 0o111
    assert (dest / "pkg/alias.py").is_symlink() and (dest / "pkg/alias.py").read_bytes() == b"x = 1"
    assert (dest / "no_mode.txt").read_bytes() == b"plain"


@pytest.mark.parametrize(
    "entries, message",
    [
        ([("../evil.py", b"x", None)], "outside"),
        ([("a/../../evil.py", b"x", None)], "outside"),
        ([("/etc/evil", b"x", None)], "absolute"),
        ([("link", b"../../etc", stat.S_IFLNK | 0o777)], "outside"),
        ([("link", b"/etc", stat.S_IFLNK | 0o777)], "absolute"),
        ([("link", b".", stat.S_IFLNK | 0o777), ("link/x", b"x", None)], "through the link"),
        ([("dev", b"", stat.S_IFCHR | 0o644)], "device"),
        ([("fifo", b"", stat.S_IFIFO | 0o644)], "device"),
    ],
)
def test_hostile_zip_is_refused(tmp_path, entries, message):
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match=message):
        extract_zip(make_zip(entries), dest)
    assert_nothing_outside(tmp_path, dest)


def test_zip_bomb_is_stopped_at_the_limit(tmp_path):
    data = make_zip([("big", b"\0" * 1_000_000, None)])
    with pytest.raises(ArchiveError, match="more than"):
        extract_zip(data, tmp_path / "dest", max_unpacked=100_000)


def test_garbage_is_not_a_zip(tmp_path):
    with pytest.raises(ArchiveError, match="not a valid zip"):
        extract_zip(b"garbage" * 10, tmp_path)


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_tar_compressions_are_told_from_the_bytes(tmp_path, compression):
    data = make_tar(
        [
            (tar_info("pkg", tarfile.DIRTYPE, mode=0o755), None),
            (tar_info("pkg/main.py"), b"x = 1"),
            (tar_info("pkg/same.py", tarfile.LNKTYPE, linkname="pkg/main.py"), None),
            (tar_info("pkg/sym.py", tarfile.SYMTYPE, linkname="main.py"), None),
        ],
        compression,
    )
    assert tar_compression(data) == compression
    dest = tmp_path / "dest"
    extract_tar(data, dest)
    assert (dest / "pkg/main.py").read_bytes() == b"x = 1"
    assert (dest / "pkg/same.py").read_bytes() == b"x = 1"
    assert (dest / "pkg/sym.py").is_symlink()


@pytest.mark.parametrize(
    "members, message",
    [
        ([(tar_info("../evil"), b"x")], "outside"),
        ([(tar_info("/abs"), b"x")], "absolute"),
        ([(tar_info("l", tarfile.SYMTYPE, linkname="../../x"), None)], "outside"),
        ([(tar_info("l", tarfile.SYMTYPE, linkname="/etc/passwd"), None)], "absolute"),
        ([(tar_info("l", tarfile.SYMTYPE, linkname="."), None), (tar_info("l/x"), b"x")], "through the link"),
        ([(tar_info("h", tarfile.LNKTYPE, linkname="/etc/passwd"), None)], "absolute"),
        ([(tar_info("h", tarfile.LNKTYPE, linkname="notinarchive"), None)], "not a file of this archive"),
        ([(tar_info("d", tarfile.CHRTYPE), None)], "device"),
        ([(tar_info("f", tarfile.FIFOTYPE), None)], "device"),
    ],
)
def test_hostile_tar_is_refused(tmp_path, members, message):
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match=message):
        extract_tar(make_tar(members, "gz"), dest)
    assert_nothing_outside(tmp_path, dest)


def test_garbage_is_not_a_tar(tmp_path):
    with pytest.raises(ArchiveError):
        extract_tar(b"\x1f\x8b garbage", tmp_path)
