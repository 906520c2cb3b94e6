"""An ASGI program whose entrypoint names only its module, as aleph-vm now sends it
(`code.interface` passed as it is): served by a real dev-mode init as `main:app`, then
`main:application`, refused with what was tried when neither exists."""

from __future__ import annotations

import io
import zipfile

import pytest

from aleph_runtime.host.machines.dev import DevMachine
from aleph_runtime.host.program import program_config
from aleph_runtime.host.supervisor import ConfigurationRejected


def zipped(source: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", source)
    return buffer.getvalue()


def app_named(name: str) -> str:
    return f"""
async def {name}(scope, receive, send):
    await receive()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"{name}"}})
"""


@pytest.mark.parametrize("name", ["app", "application"])
async def test_a_zip_program_with_entrypoint_main_is_served(tmp_path, name):
    async with DevMachine(tmp_path / "vm") as init:
        await init.configure(
            program_config(zipped(app_named(name)), "main", encoding="zip", interface="asgi")
        )
        assert (await init.client.http("GET", "/"))["body"]["body"] == name.encode()


async def test_without_app_or_application_the_refusal_says_what_was_tried(tmp_path):
    async with DevMachine(tmp_path / "vm") as init:
        with pytest.raises(ConfigurationRejected, match="module 'main' has no 'app' nor 'application'"):
            await init.configure(
                program_config(zipped(app_named("api")), "main", encoding="zip", interface="asgi")
            )
