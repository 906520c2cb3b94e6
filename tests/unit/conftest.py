"""Fixtures of the unit tests."""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

from aleph_runtime.guest.code import Paths, load_asgi_app
from aleph_runtime.guest.config import Config, Encoding, Interface, Network


@pytest.fixture
def program(tmp_path):
    """Write a module under a unique name; load its entrypoint as the init does."""
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    paths = Paths(tmp_path / "root")
    code = tmp_path / "code"
    code.mkdir()

    def load(source: str, attribute: str | None = "app"):
        """attribute None: an entrypoint naming only the module, as aleph-vm may send it."""
        module = f"program_{uuid.uuid4().hex[:12]}"
        (code / f"{module}.py").write_text(textwrap.dedent(source))
        config = Config(
            vm_hash="0" * 64, interface=Interface.ASGI, encoding=Encoding.ZIP, entrypoint=module if attribute is None else f"{module}:{attribute}",
            code=None, input_data=None, network=Network(),
        )  # fmt: skip
        return load_asgi_app(config, paths, code)

    yield load
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]
