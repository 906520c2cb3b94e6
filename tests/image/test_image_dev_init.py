"""The image works before any VM is involved: its own Python runs our init (from the
image, at -OO) in dev transport mode inside namespaces (unshare: mount, PID, UTS, net;
chroot into a tmpfs overlay over the read-only image), serving a FastAPI program driven
by the host-side supervisor client exactly as the supervisor drives a VM."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from aleph_runtime.host.machines.base import CommandMachine
from aleph_runtime.host.supervisor import wait_for_path

pytestmark = [pytest.mark.image, pytest.mark.root]

FASTAPI_PROGRAM = b"""
from fastapi import FastAPI

app = FastAPI()
state = {"started": False}


@app.on_event("startup")
async def startup():
    state["started"] = True


@app.get("/")
async def index():
    import sys, platform
    return {"hello": "aleph", "python": platform.python_version(), "optimize": sys.flags.optimize,
            "started": state["started"]}


@app.post("/echo")
async def echo(payload: dict):
    return payload
"""

# Run as PID 1 of new namespaces: an overlay (tmpfs upper) over the mounted image, the
# test's directory bound at /run/aleph-test for the sockets, then chroot and exec init1.
LAUNCH = r"""
set -eu
image=$1 work=$2 socks=$3
mount -t tmpfs tmpfs "$work"
mkdir -p "$work/upper" "$work/work" "$work/root"
mount -t overlay -o "lowerdir=$image,upperdir=$work/upper,workdir=$work/work" overlay "$work/root"
root=$work/root
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mkdir -p "$root/run/aleph-test"
mount --bind "$socks" "$root/run/aleph-test"
exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=/opt/aleph/libs \
  ALEPH_VSOCK_UDS=/run/aleph-test/v.sock /usr/bin/python3 -OO /opt/aleph/init/init1.py
"""


def v2_config(code: bytes, entrypoint: str) -> dict:
    return {
        "input_data": None,
        "interface": "asgi",
        "vm_hash": "ab" * 32,
        "encoding": "plain",
        "entrypoint": entrypoint,
        "code": code,
        "ip": None,
        "route": None,
        "dns_servers": [],
        "volumes": [],
        "variables": {"GREETING": "hi"},
        "ipv6": None,
        "ipv6_gateway": None,
        "authorized_keys": None,
    }


async def test_image_python_runs_init_in_dev_mode(mounted_rootfs: Path, tmp_path: Path):
    assert (mounted_rootfs / "opt/aleph/init/init1.py").is_file(), (
        "the image holds no /opt/aleph/init/init1.py"
    )
    socks = tmp_path / "socks"
    work = tmp_path / "work"
    socks.mkdir()
    work.mkdir()
    log_path = tmp_path / "init.log"
    with log_path.open("wb") as log:
        machine = CommandMachine(
            ["unshare", "--mount", "--pid", "--fork", "--uts", "--net", "--kill-child",
             "sh", "-c", LAUNCH, "sh", str(mounted_rootfs), str(work), str(socks)],
            socks / "v.sock", stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            signal = await machine.start(timeout=60)
            assert signal.get("version") == "2.0.0"
            await wait_for_path(socks / "v.sock", timeout=10)
            assert (await machine.configure(v2_config(FASTAPI_PROGRAM, "main:app")))["success"] is True

            answer = await machine.client.http("GET", "/")
            assert answer["headers"]["status"] == 200, answer
            body = json.loads(answer["body"]["body"])
            assert body["hello"] == "aleph" and body["optimize"] == 2 and body["started"] is True
            assert body["python"].startswith("3.11.")

            answer = await machine.client.http(
                "POST", "/echo", headers=[(b"content-type", b"application/json")], body=b'{"x": [1, 2]}'
            )
            assert json.loads(answer["body"]["body"]) == {"x": [1, 2]}

            halted = await machine.client.halt()
            assert halted.stopped and halted.shut_down, halted
            assert await machine.wait_exit(15) is not None, "the init did not end after halt"
        finally:
            await machine.kill()
            print(log_path.read_text(errors="replace")[-3000:])
