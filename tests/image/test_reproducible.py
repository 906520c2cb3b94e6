"""Two builds from the same commit and package versions give a bit-identical image, for
each runtime (debian-13's carries the `debian13` marker).

The debootstrap stage comes from the cache (it is keyed by its inputs); everything after
it really runs again in each build: pip (--rebuild-python), the init and runtime files,
cleanup, timestamps, byte-compilation, mksquashfs and the manifest. Slow (minutes).
ALEPH_TEST_REPRO_COLD=1 makes the second build start from an empty cache (its own
debootstrap, downloads included): about two minutes more."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

pytestmark = [pytest.mark.image, pytest.mark.root]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_two_builds_are_bit_identical(runtime: str, runtime_rootfs: Path, tmp_path_factory):
    # `runtime_rootfs` first: the cached standard build warms the debootstrap stage.
    rootfs = runtime_rootfs
    dirs = [tmp_path_factory.mktemp(f"build{i}") for i in (1, 2)]
    try:
        cold = (
            tmp_path_factory.mktemp("cold-cache") if os.environ.get("ALEPH_TEST_REPRO_COLD") == "1" else None
        )
        images = [
            image.ensure_rootfs(runtime=runtime, out=dirs[0], rebuild_python=True),
            image.ensure_rootfs(runtime=runtime, out=dirs[1], rebuild_python=True, cache=cold),
        ]
        hashes = [sha256(p) for p in images]
        assert hashes[0] == hashes[1], "two builds of the same inputs differ"
        manifests = [image.read_manifest(p) for p in images]
        assert manifests[0] == manifests[1]
        assert manifests[0]["sha256"] == hashes[0]
        # Same inputs as the cached image, so the same bytes as that one too.
        assert hashes[0] == sha256(rootfs)
    finally:
        for d in [*dirs, *([cold] if cold else [])]:
            shutil.rmtree(d, ignore_errors=True)


def test_update_init_repacks_quickly_and_identically(rootfs: Path, tmp_path_factory):
    """The fast path (update-init.sh: reuse the finished tree, replace the init files)
    gives the same bytes as a full build from the stages, in seconds with zstd -3."""
    import time

    full_dir = tmp_path_factory.mktemp("full")
    try:
        full = image.ensure_rootfs("lean", "zstd", level=3, out=full_dir)
        start = time.monotonic()
        quick = image.update_init("lean", "zstd", level=3, force=True)
        elapsed = time.monotonic() - start
        assert sha256(quick) == sha256(full)
        print(f"\nupdate-init (zstd -3) took {elapsed:.1f} s")
        assert elapsed < 60
    finally:
        shutil.rmtree(full_dir, ignore_errors=True)
