"""The /dev links the init adds to a devtmpfs (guest/linux.py), on a real directory."""

from __future__ import annotations

import os

from aleph_runtime.guest import linux


def test_missing_links_are_created_and_resolve(tmp_path):
    assert linux.add_dev_links(str(tmp_path)) == []
    assert {name: os.readlink(tmp_path / name) for name in os.listdir(tmp_path)} == dict(linux.DEV_LINKS)
    # They work: this process's own descriptors, through the links.
    assert os.path.samefile(tmp_path / "stdout", "/proc/self/fd/1")
    assert os.path.isdir(tmp_path / "fd")


def test_existing_entries_are_left_alone(tmp_path):
    (tmp_path / "stdout").write_text("a file the image put there")
    os.symlink("/somewhere/else", tmp_path / "fd")
    assert linux.add_dev_links(str(tmp_path)) == []
    assert (tmp_path / "stdout").read_text() == "a file the image put there"
    assert os.readlink(tmp_path / "fd") == "/somewhere/else"
    assert os.readlink(tmp_path / "stdin") == "/proc/self/fd/0"


def test_a_directory_that_cannot_take_them_is_one_sentence_per_link(tmp_path):
    missing = tmp_path / "no-such-dev"
    problems = linux.add_dev_links(str(missing))
    assert len(problems) == len(linux.DEV_LINKS)
    assert problems[0] == f"cannot create {missing}/fd -> /proc/self/fd: No such file or directory"
