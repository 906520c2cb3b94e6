"""Dockerfile.build, the way maintainers are told to build the image, run for real with
podman (which speaks docker's CLI), exactly as the README says:

    podman build -f Dockerfile.build -t aleph-runtime-build .
    podman run --rm --privileged -v "$PWD:/src" aleph-runtime-build

on a clone of this commit, from a `debian:bookworm` made locally (no registry is
reachable here: rootfs-build/container-base.sh), with rootfs-build/containers.conf
(runc, cgroupfs, no default ulimits). The squashfs it writes must be the very bytes the
host build of the same commit makes (same sha256, same package versions).

A cold container build takes about 8 minutes, so the test is cached by its inputs:
Dockerfile.build, rootfs-build/ (but its documentation), what the image holds of init/
and runtime/, and this file. Once it passed
for them, later runs skip it, saying so; a change to any of them runs it again.
ALEPH_TEST_CONTAINER_BUILD=1 runs it regardless, =0 never.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

REPO = Path(__file__).resolve().parents[2]
TAG = "aleph-runtime-build:test"


def image_sources() -> list[Path]:
    """What the image holds of this checkout, as rootfs-build/build-rootfs.sh picks it:
    init/ and the guest side of runtime/ (aleph_runtime but host/, and compat/), sources only."""
    files = [p for p in (REPO / "init").iterdir() if p.is_file()]
    for top in ("aleph_runtime", "compat"):
        files += (REPO / "runtime" / top).rglob("*.py")  # bytecode is *.pyc: not picked
    host = REPO / "runtime" / "aleph_runtime" / "host"
    return sorted(p for p in files if not p.is_relative_to(host))


def inputs_key() -> str:
    digest = hashlib.sha256()
    files = [REPO / "Dockerfile.build", Path(__file__).resolve()]
    files += sorted(p for p in (REPO / "rootfs-build").iterdir() if p.is_file() and p.suffix != ".md")
    files += image_sources()
    for path in files:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run(command: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run a step, its output to `log` (shown when it fails); its stdout's last line."""
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=out)
        out.write(result.stdout)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n" + "\n".join(tail))
    lines = result.stdout.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.root  # podman --privileged and debootstrap
def test_dockerfile_build_makes_the_host_build_bytes(tmp_path):
    gate = os.environ.get("ALEPH_TEST_CONTAINER_BUILD", "")
    if gate == "0":
        pytest.skip("ALEPH_TEST_CONTAINER_BUILD=0")
    for tool in ("podman", "runc", "git", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    key = inputs_key()
    stamp = image.cache_dir() / "container-build" / f"passed-{key}"
    if stamp.exists() and gate != "1":
        pytest.skip(f"Dockerfile.build already proven for these inputs ({stamp.read_text().strip()}); "
                    "ALEPH_TEST_CONTAINER_BUILD=1 runs it again")  # fmt: skip

    log = tmp_path / "build.log"
    src = tmp_path / "src"
    run(["git", "clone", "-q", str(REPO), str(src)], log)
    commit = run(["git", "-C", str(src), "rev-parse", "HEAD"], log)
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(src / "rootfs-build" / "containers.conf"))
    try:
        # The host build of this commit (its stages and image come from the cache when
        # they were built before), then the container's, cold, in the clone.
        host = Path(run([str(src / "rootfs-build" / "build-rootfs.sh")], log, env=env))
        run([str(src / "rootfs-build" / "container-base.sh")], log, env=env)
        started = time.monotonic()
        run(["podman", "build", "-f", "Dockerfile.build", "-t", TAG, "."], log, cwd=src, env=env)
        run(
            # The image only: what is compared. The node kernel in the container would be a
            # second full Linux build (20-40 min on 2 cores); its recipe is the host's.
            [
                "podman",
                "run",
                "--rm",
                "--privileged",
                "-v",
                f"{src}:/src",
                "-e",
                "ALEPH_BUILD_KERNELS=0",
                *pip_options(),
                TAG,
            ],
            log,
            cwd=src,
            env=env,
        )
        minutes = (time.monotonic() - started) / 60

        built_manifest = json.loads((src / "build" / "manifest.json").read_text())
        assert built_manifest["commit"] == commit
        host_manifest = json.loads((host / "manifest.json").read_text())
        if version_differences(host_manifest, built_manifest):
            # The cached host stages predate a mirror update: build the host side cold too.
            cold = dict(env, ALEPH_RUNTIME_CACHE=str(tmp_path / "host-cache"))
            host = Path(run([str(src / "rootfs-build" / "build-rootfs.sh")], log, env=cold))
            host_manifest = json.loads((host / "manifest.json").read_text())
        differ = version_differences(host_manifest, built_manifest)
        assert not differ, f"the container installed other package versions (host, container): {differ}"
        built_sha = hashlib.sha256((src / "build" / "rootfs.squashfs").read_bytes()).hexdigest()
        assert built_sha == host_manifest["sha256"], "the container's squashfs differs from the host build's"

        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(
            f"commit {commit}, sha256 {built_sha}, {minutes:.1f} min, {time.strftime('%Y-%m-%d %H:%M')}\n"
        )
    finally:
        subprocess.run(["podman", "rmi", "-f", TAG], capture_output=True, env=env)
        # The container's cache and output are root's, and large: do not leave them in /tmp.
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(tmp_path / "host-cache", ignore_errors=True)


def pip_options() -> list[str]:
    """The host's way to PyPI, for pip in the container (README: Dockerfile.build): its CA
    bundle (a TLS-intercepting proxy's CA is in the host's, not in the container's) and
    its index settings."""
    options = []
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():
        options += ["-v", f"{ca}:/etc/host-ca.crt:ro", "-e", "PIP_CERT=/etc/host-ca.crt"]
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT"):
        if os.environ.get(name):
            options += ["-e", f"{name}={os.environ[name]}"]
    return options


def version_differences(host: dict, built: dict) -> dict[str, tuple]:
    differ = {}
    for kind in ("debian_packages", "python_packages"):
        for name in host[kind].keys() | built[kind].keys():
            if host[kind].get(name) != built[kind].get(name):
                differ[name] = (host[kind].get(name), built[kind].get(name))
    return differ
