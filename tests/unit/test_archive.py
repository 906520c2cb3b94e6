"""Archive safety: hostile entries are refused and nothing lands outside the destination.

Archives are real ones (tarfile, zipfile, shutil and the `tar` command); the space limits
are tried on a real small tmpfs mounted in a private mount namespace.
"""

import collections
import contextlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from aleph_runtime.guest.archive import (
    ArchiveError,
    extract_tar,
    extract_zip,
    tar_compression,
    zip_entry_count,
)

REPOSITORY = Path(__file__).resolve().parents[2]


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
    # A refused archive leaves nothing half-written behind either.
    assert not dest.exists() or list(dest.iterdir()) == []


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


# --- archives as people make them ---


def test_tar_command_of_a_directory_with_dot_entries(tmp_path):
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "main.py").write_text("app = 1\n")
    (source / "pkg" / "util.py").write_text("x = 2\n")
    archive = tmp_path / "code.tar.gz"
    subprocess.run(["tar", "-C", str(source), "-czf", str(archive), "."], check=True)
    with tarfile.open(archive) as opened:
        names = opened.getnames()
    assert "." in names and "./main.py" in names  # what the tar command writes
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o711)
    extract_tar(archive.read_bytes(), dest)
    assert (dest / "main.py").read_text() == "app = 1\n"
    assert (dest / "pkg" / "util.py").read_text() == "x = 2\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o711  # `./` does not chmod the destination


@pytest.mark.parametrize("kind", ["gztar", "bztar", "xztar", "tar", "zip"])
def test_shutil_make_archive(tmp_path, kind):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "main.py").write_text("app = 1\n")
    (source / "sub" / "data.txt").write_text("data")
    archive = Path(shutil.make_archive(str(tmp_path / "code"), kind, root_dir=source))
    dest = tmp_path / "dest"
    (extract_zip if kind == "zip" else extract_tar)(archive.read_bytes(), dest)
    assert (dest / "main.py").read_text() == "app = 1\n"
    assert (dest / "sub" / "data.txt").read_text() == "data"


@pytest.mark.parametrize("name", ["./", ".", "././", "./a/./b/"])
def test_dot_directory_entries_are_normalised(tmp_path, name):
    data = make_tar([(tar_info(name, tarfile.DIRTYPE, mode=0o755), None), (tar_info("./x.py"), b"x")])
    extract_tar(data, tmp_path / "dest")
    assert (tmp_path / "dest" / "x.py").read_bytes() == b"x"


def test_an_entry_without_a_name_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="without a name"):
        extract_zip(make_zip([("", b"x", None)]), tmp_path / "dest")


def test_a_file_named_dot_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="without a name"):
        extract_zip(make_zip([(".", b"", stat.S_IFREG | 0o644)]), tmp_path / "dest")


def test_a_later_tar_entry_replaces_an_earlier_one(tmp_path):
    # `tar -r` appends a newer copy of a file: the last one wins, as with the tar command.
    data = make_tar([(tar_info("a.py"), b"old"), (tar_info("./a.py"), b"new")])
    extract_tar(data, tmp_path / "dest")
    assert (tmp_path / "dest" / "a.py").read_bytes() == b"new"


def test_setuid_bits_never_come_from_an_archive(tmp_path):
    data = make_tar(
        [(tar_info("d", tarfile.DIRTYPE, mode=0o6777), None), (tar_info("d/f", mode=0o4755), b"x")]
    )
    extract_tar(data, tmp_path / "dest")
    assert stat.S_IMODE((tmp_path / "dest" / "d").stat().st_mode) == 0o777
    assert stat.S_IMODE((tmp_path / "dest" / "d" / "f").stat().st_mode) == 0o755


# --- safety as the kernel resolves paths ---


def chain_members():
    """Each link is inside the archive lexically; the kernel resolves a/w to ../secret."""
    return [
        (tar_info("a", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("a/u", tarfile.SYMTYPE, linkname=".."), None),
        (tar_info("a/v", tarfile.SYMTYPE, linkname="u/.."), None),
        (tar_info("a/w", tarfile.SYMTYPE, linkname="v/secret"), None),
        (tar_info("h", tarfile.LNKTYPE, linkname="a/w"), None),
    ]


def test_symlink_chain_out_of_the_destination_is_refused(tmp_path):
    (tmp_path / "secret").write_text("the host's secret")
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match="'a/v' resolves outside the destination"):
        extract_tar(make_tar(chain_members()), dest)
    assert list(dest.iterdir()) == []


def test_hard_link_to_a_link_is_refused_even_when_the_link_stays_inside(tmp_path):
    members = [
        (tar_info("f"), b"inside"),
        (tar_info("l", tarfile.SYMTYPE, linkname="f"), None),
        (tar_info("h", tarfile.LNKTYPE, linkname="l"), None),
    ]
    with pytest.raises(ArchiveError, match="not a file of this archive"):
        extract_tar(make_tar(members), tmp_path / "dest")


def test_links_are_checked_again_once_every_entry_is_out(tmp_path):
    # x -> y/.. is the destination when made; once y -> . exists, the kernel takes x outside.
    members = [
        (tar_info("x", tarfile.SYMTYPE, linkname="y/.."), None),
        (tar_info("y", tarfile.SYMTYPE, linkname="."), None),
    ]
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match="'x' resolves outside"):
        extract_tar(make_tar(members), dest)
    assert list(dest.iterdir()) == []


def test_hard_links_are_real_links_to_files_of_the_archive(tmp_path):
    members = [
        (tar_info("f", mode=0o755), b"content"),
        (tar_info("sub/h", tarfile.LNKTYPE, linkname="./f"), None),
    ]
    dest = tmp_path / "dest"
    extract_tar(make_tar(members), dest)
    assert (dest / "sub" / "h").read_bytes() == b"content"
    assert (dest / "sub" / "h").stat().st_ino == (dest / "f").stat().st_ino


@pytest.fixture
def volume_link(tmp_path):
    """A directory outside dest, reached from dest through a link that was already there
    (a volume in dev mode), and a sibling whose name starts like dest's."""
    outside = tmp_path / "dest2"
    outside.mkdir(mode=0o755)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "vol").symlink_to(outside)
    return dest, outside


@pytest.mark.parametrize(
    "members",
    [
        [(tar_info("vol", tarfile.DIRTYPE, mode=0o6777), None)],
        [(tar_info("vol/x.py"), b"x")],
        [(tar_info("vol/sub", tarfile.DIRTYPE, mode=0o755), None)],
        [(tar_info("vol/l", tarfile.SYMTYPE, linkname="."), None)],
    ],
    ids=["chmod", "file", "directory", "link"],
)
def test_nothing_goes_through_a_link_already_in_the_destination(volume_link, members):
    dest, outside = volume_link
    with pytest.raises(ArchiveError, match="through the link 'vol'"):
        extract_tar(make_tar(members), dest)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755
    assert list(outside.iterdir()) == []
    assert (dest / "vol").is_symlink()  # what was there before stays


def test_a_link_to_a_sibling_whose_name_starts_like_the_destination_is_outside(volume_link):
    # dest/l -> vol -> .../dest2: "dest2" starts with "dest", and is still outside it.
    dest, _outside = volume_link
    with pytest.raises(ArchiveError, match="'l' resolves outside the destination"):
        extract_tar(make_tar([(tar_info("l", tarfile.SYMTYPE, linkname="vol"), None)]), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["vol"]


def test_no_descriptor_is_left_open_whatever_the_outcome(tmp_path, volume_link):
    dest, _ = volume_link
    archives = [
        make_tar([(tar_info("a/b/c.py"), b"x"), (tar_info("a/d.py"), b"y")]),
        make_tar(chain_members()),
        make_tar([(tar_info("new/x.py"), b"x"), (tar_info("vol/x.py"), b"x")]),
        make_tar([(tar_info("x.py"), b"x"), (tar_info("../evil"), b"x")]),
        b"\x1f\x8b garbage",
    ]
    before = sorted(os.listdir("/proc/self/fd"))
    for index, data in enumerate(archives * 3):
        with contextlib.suppress(ArchiveError):
            extract_tar(data, dest if index % 2 else tmp_path / f"d{index}")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_file_entry_replaces_a_link_rather_than_writing_through_it(volume_link):
    dest, outside = volume_link
    extract_tar(make_tar([(tar_info("vol"), b"plain file")]), dest)
    assert (dest / "vol").read_bytes() == b"plain file" and not (dest / "vol").is_symlink()
    assert list(outside.iterdir()) == []


def test_partial_output_is_removed_but_what_was_there_stays(tmp_path):
    dest = tmp_path / "dest"
    (dest / "existing").mkdir(parents=True)
    (dest / "existing" / "keep.txt").write_text("keep")
    members = [
        (tar_info("new", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("new/a.py"), b"a"),
        (tar_info("existing/b.py"), b"b"),
        (tar_info("../evil"), b"x"),
    ]
    with pytest.raises(ArchiveError, match="outside"):
        extract_tar(make_tar(members), dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["existing", "existing/keep.txt"]


# --- bombs and limits ---


def test_entry_limit(tmp_path):
    members = [(tar_info(f"f{i}"), b"") for i in range(11)]
    with pytest.raises(ArchiveError, match=r"more than 10 entries, the limit \(stopped at entry 'f10'\)"):
        extract_tar(make_tar(members), tmp_path / "dest", max_entries=10)
    assert list((tmp_path / "dest").iterdir()) == []


def test_zip_entries_are_counted_before_zipfile_parses_them(tmp_path):
    data = make_zip([(f"f{i}", b"", None) for i in range(11)])
    assert zip_entry_count(data, limit=100) == 11
    with pytest.raises(ArchiveError, match=r"more than 10 entries, the limit \(11 counted\)"):
        extract_zip(data, tmp_path / "dest", max_entries=10)
    assert not (tmp_path / "dest").exists()


def test_a_lying_end_record_does_not_hide_entries(tmp_path):
    # The end record says 1 entry; zipfile would still parse the 50 of the central directory.
    data = bytearray(make_zip([(f"f{i}", b"", None) for i in range(50)]))
    end = data.rfind(b"PK\x05\x06")
    data[end + 8 : end + 12] = (1).to_bytes(2, "little") * 2
    assert len(zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()) == 50
    assert zip_entry_count(bytes(data), limit=10) == 11  # the walk stops past the limit
    with pytest.raises(ArchiveError, match=r"more than 10 entries, the limit \(11 counted\)"):
        extract_zip(bytes(data), tmp_path / "dest", max_entries=10)


def test_zip64_entry_count_is_read_from_its_end_record(tmp_path):
    # Over 65,535 entries zipfile writes the zip64 end record: the count is read from it.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(0x10001):
            archive.writestr(f"{i}", b"")
    data = buffer.getvalue()
    assert zip_entry_count(data, limit=10) == 0x10001
    with pytest.raises(ArchiveError, match=r"entries, the limit \(65537 counted\)"):
        extract_zip(data, tmp_path / "dest", max_entries=0x10000)


def test_zip_bomb_is_refused_from_its_declared_sizes(tmp_path):
    data = make_zip([("ok.py", b"x", None), ("big", b"\0" * 1_000_000, None)])
    with pytest.raises(ArchiveError, match=r"more than 100000 bytes, the limit \(1000001 declared\)"):
        extract_zip(data, tmp_path / "dest", max_unpacked=100_000)
    assert not (tmp_path / "dest" / "ok.py").exists()


def test_tar_bomb_stops_at_the_limit_naming_the_entry(tmp_path):
    data = make_tar([(tar_info("ok.py"), b"x"), (tar_info("big"), b"\0" * 1_000_000)], "bz2")
    assert len(data) < 2000
    with pytest.raises(
        ArchiveError, match=r"more than 100000 bytes, the limit \(stopped at entry 'big', 1000000 bytes\)"
    ):
        extract_tar(data, tmp_path / "dest", max_unpacked=100_000)
    assert list((tmp_path / "dest").iterdir()) == []


def test_huge_extended_header_is_refused_before_it_is_read(tmp_path):
    info = tar_info("f")
    info.pax_headers = {"comment": "x" * (2 << 20)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2", format=tarfile.PAX_FORMAT) as archive:
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArchiveError, match="extended header"):
        extract_tar(buffer.getvalue(), tmp_path / "dest")


#: Extracts argv[1] (a .zip or a tar) into a tmpfs of argv[2] bytes and argv[3] inodes,
#: mounted in this process's private mount namespace; prints the outcome as JSON.
EXTRACT_ON_TMPFS = r"""
import json, os, subprocess, sys
from aleph_runtime.guest.archive import ArchiveError, extract_tar, extract_zip
path, size, inodes, mount = sys.argv[1:5]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", mount], check=True)
data = open(path, "rb").read()
error = None
try:
    (extract_zip if path.endswith(".zip") else extract_tar)(data, mount + "/code")
except ArchiveError as e:
    error = str(e)
free = os.statvfs(mount)
print(json.dumps({"error": error, "left": sorted(os.listdir(mount + "/code")), "free": free.f_bavail * free.f_frsize}))
"""


def extract_on_tmpfs(archive: Path, size: str, inodes: int = 100_000) -> dict:
    mount = archive.parent / "mnt"
    mount.mkdir()
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            EXTRACT_ON_TMPFS,
            str(archive),
            size,
            str(inodes),
            str(mount),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY / "runtime")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused_on_tmpfs(archive: Path, size: str, message: str, inodes: int = 100_000) -> dict:
    """extract_on_tmpfs's outcome, which must be a refusal saying `message` that left nothing."""
    outcome = extract_on_tmpfs(archive, size, inodes)
    assert message in outcome["error"]
    assert outcome["left"] == []
    return outcome


@pytest.mark.root
def test_zip_bomb_is_bounded_by_the_free_space(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("main.py", "app = 1\n")
        out.writestr("zeros", b"\0" * (64 << 20))
    assert archive.stat().st_size < 1 << 20
    refused_on_tmpfs(archive, "16m", "the target filesystem's free space less a margin")


@pytest.mark.root
def test_tar_bomb_is_bounded_by_the_free_space_and_cleaned_up(tmp_path):
    archive = tmp_path / "bomb.tar.bz2"
    members = [(tar_info("main.py"), b"\0" * 8), (tar_info("zeros"), b"\0" * (64 << 20))]
    archive.write_bytes(make_tar(members, "bz2"))
    assert archive.stat().st_size < 64 << 10
    stopped = "free space less a margin (stopped at entry 'zeros', 67108864 bytes)"
    outcome = refused_on_tmpfs(archive, "16m", stopped)
    assert outcome["free"] > 15 << 20  # not a byte of it was written


@pytest.mark.root
def test_many_small_files_are_counted_by_the_blocks_they_take(tmp_path):
    # 2,000 one-byte files: 2 KB of content, 8 MB of tmpfs pages.
    archive = tmp_path / "small.tar"
    archive.write_bytes(make_tar([(tar_info(f"f{i}"), b"x") for i in range(2000)]))
    refused_on_tmpfs(archive, "4m", "free space less a margin")


@pytest.mark.root
def test_entries_are_bounded_by_the_free_inodes(tmp_path):
    archive = tmp_path / "many.tar"
    archive.write_bytes(make_tar([(tar_info(f"d{i}"), b"") for i in range(600)]))
    refused_on_tmpfs(archive, "64m", "entries, the target filesystem's free inodes", inodes=500)


@pytest.mark.root
def test_an_archive_that_fits_is_extracted_on_a_small_tmpfs(tmp_path):
    archive = tmp_path / "fits.tar.gz"
    archive.write_bytes(make_tar([(tar_info("data.bin"), b"\1" * (4 << 20))], "gz"))
    outcome = extract_on_tmpfs(archive, "16m")
    assert outcome["error"] is None and outcome["left"] == ["data.bin"]


@pytest.mark.parametrize(
    "name, message",
    [("a/" * 300 + "f", "nested more than 256 directories deep"), ("n" * 5000, "longer than 4096 bytes")],
)
def test_names_past_the_kernels_limits_are_refused(tmp_path, name, message):
    members = [(tar_info("ok.py"), b"x"), (tar_info(name), b"x")]
    with pytest.raises(ArchiveError, match=message):
        extract_tar(make_tar(members, "gz"), tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_deep_but_reasonable_trees_are_extracted_and_cleaned_up(tmp_path):
    deep = "d/" * 200
    members = [(tar_info(deep + "f.py"), b"x"), (tar_info("../evil"), b"x")]
    with pytest.raises(ArchiveError, match="outside"):
        extract_tar(make_tar(members, "gz"), tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def seed_archives() -> dict[str, bytes]:
    members = [
        (tar_info("./", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("./a.py"), b"x" * 3000),
        (tar_info("./d/b.txt"), b"hello" * 100),
        (tar_info("./l", tarfile.SYMTYPE, linkname="a.py"), None),
        (tar_info("./h", tarfile.LNKTYPE, linkname="./a.py"), None),
    ]
    seeds = {compression or "tar": make_tar(members, compression) for compression in ("", "gz", "bz2", "xz")}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.py", "x" * 3000)
        archive.writestr("d/", "")
        archive.writestr("d/b.txt", "hello" * 100)
    seeds["zip"] = buffer.getvalue()
    return seeds


def test_mutated_archives_fail_only_with_an_archive_error(tmp_path):
    """Seeded and bounded: bytes flipped, cut and inserted in real archives of each kind.
    Whatever the damage, the answer is an ArchiveError (a configuration error the init
    reports), never another exception, and a failed extraction leaves nothing."""
    rng = random.Random(9)
    seeds = seed_archives()
    outcomes = collections.Counter()
    for index in range(1000):
        kind = rng.choice(sorted(seeds))
        data = bytearray(seeds[kind])
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            roll = rng.random()
            if roll < 0.6:
                data[at] = rng.randrange(256)
            elif roll < 0.8:
                del data[at : at + rng.randint(1, 50)]
            else:
                data[at:at] = rng.randbytes(rng.randint(1, 20))
        dest = tmp_path / f"d{index}"
        try:
            (extract_zip if kind == "zip" else extract_tar)(bytes(data), dest)
            outcomes["extracted"] += 1
        except ArchiveError:
            outcomes["refused"] += 1
            assert not dest.exists() or list(dest.iterdir()) == []
        shutil.rmtree(dest, ignore_errors=True)
    assert os.listdir(tmp_path) == []
    assert outcomes["refused"] > 100 and outcomes["extracted"] > 100  # both paths were exercised


def corrupt(data: bytes, at: int, length: int = 16) -> bytes:
    return data[:at] + bytes(0xFF ^ byte for byte in data[at : at + length]) + data[at + length :]


def test_broken_compressed_data_is_an_archive_error(tmp_path):
    seeds = seed_archives()
    # The zip's first entry's deflate stream (after its 30-byte header and its name):
    # zipfile lets zlib.error through.
    with pytest.raises(ArchiveError, match=r"'a\.py' cannot be read"):
        extract_zip(corrupt(seeds["zip"], 30 + len("a.py") + 2), tmp_path / "zip")
    # The xz stream's body: lzma raises its own LZMAError; bz2, an OSError that is not a write's.
    with pytest.raises(ArchiveError, match="tar archive"):
        extract_tar(corrupt(seeds["xz"], len(seeds["xz"]) // 2), tmp_path / "xz")
    with pytest.raises(ArchiveError, match=r"tar archive|cannot be read"):
        extract_tar(corrupt(seeds["bz2"], len(seeds["bz2"]) // 2), tmp_path / "bz2")


def test_a_zip_needing_a_newer_version_is_an_archive_error(tmp_path):
    data = bytearray(seed_archives()["zip"])
    central = data.rfind(b"PK\x01\x02")  # the last central directory entry: its "version needed" field
    data[central + 6 : central + 8] = (217).to_bytes(2, "little")
    with pytest.raises(ArchiveError, match=r"not a valid zip archive: zip file version 21\.7"):
        extract_zip(bytes(data), tmp_path / "dest")


# --- headers tarfile reads whole, built byte by byte (tarfile cannot write these) ---


def tar_block(name: bytes, size: int, kind: bytes, raw_size: bytes | None = None, extra=()) -> bytes:
    """One ustar header block: `raw_size` replaces the octal size field (base-256 sizes),
    `extra` is (offset, bytes) written over the block before the checksum."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = raw_size if raw_size is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    for offset, data in extra:
        block[offset : offset + len(data)] = data
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def pax_records(fields: dict[str, str]) -> bytes:
    records = b""
    for key, value in fields.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        records += str(length).encode() + body
    return records


def compressed_tar(*parts: bytes, compress=None) -> bytes:
    import gzip

    return (compress or gzip.compress)(b"".join(parts) + b"\0" * 1024)


def sparse_10_tar(entries: int) -> bytes:
    """GNU sparse 1.0 (pax GNU.sparse.major=1): the map, `entries` (offset, size) pairs as
    decimal lines, sits at the start of the member's data; tarfile reads it whole in next()."""
    records = pax_records(
        {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "f", "GNU.sparse.realsize": "1"}
    )
    sparse_map = b"%d\n" % entries + b"0\n" * (2 * entries)
    return compressed_tar(
        tar_block(b"./PaxHeaders/f", len(records), b"x"),
        padded(records),
        tar_block(b"./GNUSparseFile.0/f", len(sparse_map), b"0"),
        padded(sparse_map),
    )


def old_gnu_sparse_tar(extension_blocks: int) -> bytes:
    """The old GNU 'S' type: 4 (offset, size) pairs in the header, 21 more in each
    extension block that follows while its last byte says so; tarfile reads them all."""
    pair = b"%011o\0%011o\0" % (1, 1)
    header = tar_block(b"f", 0, b"S", extra=((386, pair * 4), (482, b"\x01"), (483, b"%011o\0" % 1)))
    extension = bytearray(pair * 21 + b"\0" * (512 - 21 * 24))
    extension[504] = 1
    last = bytearray(extension)
    last[504] = 0
    return compressed_tar(header, bytes(extension) * (extension_blocks - 1), bytes(last))


def negative_size_long_name_tar(zeros: int) -> bytes:
    """A GNU long name whose size field is a negative base-256 number: tarfile reads
    `size` rounded to blocks, and bz2's negative read is the whole rest of the stream."""
    import bz2

    negative = b"\xff" * 10 + b"\xfc\x00"  # -1024
    return compressed_tar(
        tar_block(b"././@LongLink", 0, b"L", raw_size=negative), b"\0" * zeros, compress=bz2.compress
    )


#: Extracts argv[1] (a tar) with max_unpacked 64 KiB; prints the refusal (or None) and how
#: much the process's peak resident memory grew meanwhile, as JSON.
EXTRACT_MEASURED = r"""
import json, resource, sys
from aleph_runtime.guest import archive
archive._tar()  # tarfile imported before the measure
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
error = None
try:
    archive.extract_tar(data, sys.argv[2], max_unpacked=64 << 10)
except archive.ArchiveError as e:
    error = str(e)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": error, "growth_kib": after - before}))
"""


def extract_measured(tmp_path: Path, data: bytes) -> dict:
    (tmp_path / "hostile.tar").write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", EXTRACT_MEASURED, str(tmp_path / "hostile.tar"), str(tmp_path / "dest")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY / "runtime")},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "hostile",
    [lambda: sparse_10_tar(2_000_000), lambda: old_gnu_sparse_tar(40_000)],
    ids=["gnu-sparse-1.0", "old-gnu-sparse"],
)
def test_a_sparse_map_is_refused_before_tarfile_reads_it(tmp_path, hostile):
    """Issue 28: 8 KB of gzip made the extracting process grow by 312 MiB, then succeed."""
    data = hostile()
    assert len(data) < 100_000
    outcome = extract_measured(tmp_path, data)
    print(f"{len(data)} bytes: {outcome}")
    assert outcome["error"] is not None and "is a sparse file" in outcome["error"], outcome
    assert outcome["growth_kib"] < 8 << 10, outcome  # KiB: the refusal's cost, not the map's
    assert list((tmp_path / "dest").iterdir()) == []


@pytest.mark.parametrize(
    "fields",
    [{"GNU.sparse.map": "0,1," * 1000 + "0,1"}, {"GNU.sparse.size": "1", "GNU.sparse.offset": "0"}],
    ids=["pax-0.1", "pax-0.0"],
)
def test_every_pax_sparse_format_is_refused(tmp_path, fields):
    records = pax_records({**fields, "GNU.sparse.name": "disk.img"})
    data = compressed_tar(
        tar_block(b"PaxHeaders/f", len(records), b"x"), padded(records), tar_block(b"f", 0, b"0")
    )
    with pytest.raises(ArchiveError, match="is a sparse file"):
        extract_tar(data, tmp_path / "dest")


def test_a_global_sparse_key_is_refused(tmp_path):
    records = pax_records({"GNU.sparse.realsize": "1000000000"})
    data = compressed_tar(tar_block(b"g", len(records), b"g"), padded(records), tar_block(b"f", 0, b"0"))
    with pytest.raises(ArchiveError, match="is a sparse file"):
        extract_tar(data, tmp_path / "dest")


def test_a_negative_size_is_refused_at_once(tmp_path):
    """A base-256 size of -512 sent tarfile back onto the same header: 100,000 times, 9 s of
    CPU for 100 bytes (and a gzip rewind per step on a big archive), then a wrong reason."""
    minus_512 = b"\xff" * 10 + b"\xfe\x00"
    data = compressed_tar(
        tar_block(b"a", 1, b"0"), padded(b"a"), tar_block(b"b", 0, b"0", raw_size=minus_512)
    )
    with pytest.raises(ArchiveError, match="'b' has a negative size"):
        extract_tar(data, tmp_path / "dest")
    records = pax_records({"size": "-512"})
    data = compressed_tar(
        tar_block(b"PaxHeaders/c", len(records), b"x"), padded(records), tar_block(b"c", 0, b"0")
    )
    with pytest.raises(ArchiveError, match="'c' has a negative size"):
        extract_tar(data, tmp_path / "dest2")


def test_header_bytes_count_against_the_limit(tmp_path):
    """Each long name and pax header is bytes unpacked into PID 1's memory: a 64 KiB limit
    stops an archive of small files with big headers."""
    members = []
    for index in range(10):
        info = tar_info(f"f{index}")
        info.pax_headers = {"comment": "x" * 8000}
        members.append((info, b"x"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    extract_tar(buffer.getvalue(), tmp_path / "roomy", max_unpacked=1 << 20)
    with pytest.raises(
        ArchiveError, match=r"more than 65536 bytes, the limit \(stopped at entry '\(the header"
    ):
        extract_tar(buffer.getvalue(), tmp_path / "dest", max_unpacked=64 << 10)


def test_headers_before_one_entry_are_bounded_together(tmp_path):
    """Each under the size limit, many together are held at once (tarfile recurses)."""
    records = pax_records({"comment": "x" * 200_000})
    chain = [tar_block(b"PaxHeaders/f", len(records), b"x") + padded(records)] * 6
    with pytest.raises(ArchiveError, match="bytes of extended headers before one entry"):
        extract_tar(compressed_tar(*chain, tar_block(b"f", 0, b"0")), tmp_path / "a")
    small = pax_records({"comment": "x"})
    chain = [tar_block(b"PaxHeaders/f", len(small), b"x") + padded(small)] * 20
    with pytest.raises(ArchiveError, match="more than 16 headers before one entry"):
        extract_tar(compressed_tar(*chain, tar_block(b"f", 0, b"0")), tmp_path / "b")
    glob = [tar_block(b"g", len(records), b"g") + padded(records), tar_block(b"f", 0, b"0")] * 6
    with pytest.raises(ArchiveError, match="bytes of extended headers in global headers"):
        extract_tar(compressed_tar(*glob), tmp_path / "c")
