"""/data: input_data unpacked safely, output_data zipped only when /data changed."""

from __future__ import annotations

import io
import os
import time
import zipfile

import pytest

from aleph_runtime.guest import data as data_module
from aleph_runtime.guest.config import ConfigError
from aleph_runtime.guest.data import DataExport, unpack_input_data
from tests.helpers import zip_bytes


def _names(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}


def test_unpack_input_data_creates_the_directory(tmp_path):
    target = tmp_path / "data"
    unpack_input_data(zip_bytes({"a.txt": b"A", "sub/b.txt": b"B"}), str(target))
    assert (target / "a.txt").read_bytes() == b"A"
    assert (target / "sub" / "b.txt").read_bytes() == b"B"


def test_unpack_hostile_zip_is_a_config_error_and_writes_nothing_outside(tmp_path):
    target = tmp_path / "data"
    with pytest.raises(ConfigError):
        unpack_input_data(zip_bytes({"../escaped.txt": b"x"}), str(target))
    assert not (tmp_path / "escaped.txt").exists()


def test_empty_or_missing_data_dir_exports_nothing(tmp_path):
    assert DataExport(str(tmp_path / "missing")).collect() is None
    (tmp_path / "empty").mkdir()
    assert DataExport(str(tmp_path / "empty")).collect() is None


def test_export_zips_the_tree(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "sub" / "b").write_bytes(b"22")
    assert _names(DataExport(str(tmp_path)).collect()) == {"a": b"1", "sub/b": b"22"}


def _age(path, seconds=10):
    old = time.time() - seconds
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (old, old))
    os.utime(path, (old, old))


def test_unchanged_data_is_not_zipped_again(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    # ctimes cannot be set back: wait until the entries are out of the racy window.
    time.sleep(data_module.RACY_WINDOW_NS / 1e9 + 0.02)
    export = DataExport(str(tmp_path))
    first = export.collect()
    for _ in range(5):
        assert export.collect() == first
    assert export.zips_made == 1


def test_a_rewrite_with_same_size_is_seen(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"1")
    export = DataExport(str(tmp_path))
    assert _names(export.collect()) == {"a": b"1"}
    path.write_bytes(b"2")  # same size, probably the same coarse timestamp tick
    assert _names(export.collect()) == {"a": b"2"}
    path.write_bytes(b"3")
    assert _names(export.collect()) == {"a": b"3"}


def test_a_rewrite_with_an_old_mtime_is_seen_through_ctime_and_inode(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"1")
    _age(tmp_path, 100)
    export = DataExport(str(tmp_path))
    export.collect()
    os.unlink(path)
    path.write_bytes(b"2")
    _age(tmp_path, 100)  # the program even restores the old mtime
    assert _names(export.collect()) == {"a": b"2"}


def test_added_and_removed_files_are_seen(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    export = DataExport(str(tmp_path))
    export.collect()
    (tmp_path / "b").write_bytes(b"2")
    assert _names(export.collect()) == {"a": b"1", "b": b"2"}
    os.unlink(tmp_path / "a")
    assert _names(export.collect()) == {"b": b"2"}
    os.unlink(tmp_path / "b")
    assert export.collect() is None


def test_racy_window_is_a_module_setting():
    assert data_module.RACY_WINDOW_NS > 0


async def test_acollect_matches_collect_and_is_cached(tmp_path):
    export = DataExport(str(tmp_path))
    assert await export.acollect() is None
    (tmp_path / "a").write_bytes(b"1")
    time.sleep(data_module.RACY_WINDOW_NS / 1e9 + 0.02)
    first = await export.acollect()
    assert _names(first) == {"a": b"1"}
    assert await export.acollect() == first
    assert export.zips_made == 1
