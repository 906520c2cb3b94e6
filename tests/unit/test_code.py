"""Finding the program's ASGI app: the entrypoint, Django's `application`, and errors a
user understands (the module's ASGI apps when the name is wrong, the runtime's Python
version when a package needs a newer one). Real modules, imported from a temporary
directory."""

from __future__ import annotations

import platform
import sys

import pytest

from aleph_runtime.guest.code import is_asgi_callable
from aleph_runtime.guest.config import ConfigError

ASGI_APPS = """
    async def handler(scope, receive, send):
        pass

    class Server:
        async def __call__(self, scope, receive, send):
            pass

    server = Server()

    def helper(value):
        return value

    async def fetch(url):
        pass

    class Settings:
        pass

    import json
"""


def test_the_named_attribute(program):
    app = program("async def app(scope, receive, send):\n    pass\n")
    assert app.__name__ == "app"


def test_application_when_app_is_absent(program):
    # Django's asgi.py exposes `application`; `main:app` is what the CLI infers for main.py.
    app = program("async def application(scope, receive, send):\n    pass\n")
    assert app.__name__ == "application"


def test_app_wins_over_application(program):
    app = program(
        "async def app(scope, receive, send):\n    pass\n\nasync def application(scope, receive, send):\n    pass\n"
    )
    assert app.__name__ == "app"


@pytest.mark.parametrize("name", ["app", "application"])
def test_an_entrypoint_naming_only_the_module_serves_its_app_then_its_application(program, name):
    # aleph-vm sends the message's entrypoint as it is: `main` for a zip or squashfs program.
    app = program(f"async def {name}(scope, receive, send):\n    pass\n", attribute=None)
    assert app.__name__ == name


def test_an_entrypoint_naming_only_the_module_says_what_it_tried(program):
    with pytest.raises(ConfigError) as caught:
        program(ASGI_APPS, attribute=None)
    message = str(caught.value)
    assert "has no 'app' nor 'application'; its ASGI applications are 'handler', 'server'" in message
    assert message.startswith("the entrypoint 'program_") and "\n" not in message


def test_a_missing_app_names_the_fallback_it_tried_too(program):
    with pytest.raises(ConfigError, match="has no 'app' nor 'application'; it defines no ASGI application"):
        program("x = 1\n")


def test_a_missing_attribute_lists_the_modules_asgi_apps(program):
    with pytest.raises(ConfigError) as caught:
        program(ASGI_APPS, attribute="apps")
    message = str(caught.value)
    assert "has no 'apps'" in message
    assert "its ASGI applications are 'handler', 'server'" in message
    for name in ("helper", "fetch", "Server", "Settings", "json"):
        assert repr(name) not in message
    assert message.count(".") <= 2 and "\n" not in message  # one sentence (a module name has no dot here)


def test_a_module_without_asgi_apps_says_so(program):
    with pytest.raises(ConfigError, match="defines no ASGI application"):
        program("def helper(value):\n    return value\n")


def test_no_application_fallback_for_another_name(program):
    with pytest.raises(ConfigError, match="has no 'api'"):
        program("async def application(scope, receive, send):\n    pass\n", attribute="api")


def test_an_import_of_a_newer_standard_library_names_the_python_version(program):
    # What Django 6.1 does on Python 3.11: inspect.markcoroutinefunction is from 3.12.
    with pytest.raises(ConfigError) as caught:
        program("from inspect import no_such_function_in_any_python\n")
    message = str(caught.value)
    assert "ImportError: cannot import name 'no_such_function_in_any_python' from 'inspect'" in message
    assert (
        f"the runtime runs Python {platform.python_version()}; this package may need a newer Python"
        in message
    )
    assert "Traceback" in caught.value.detail


def test_a_syntax_error_names_the_python_version(program):
    with pytest.raises(ConfigError) as caught:
        program("def broken(:\n    pass\n")
    assert "SyntaxError" in str(caught.value)
    assert f"Python {platform.python_version()}" in str(caught.value)


def test_other_import_failures_have_no_python_hint(program):
    with pytest.raises(ConfigError) as caught:
        program("import no_such_package_anywhere\n")
    assert "no_such_package_anywhere" in str(caught.value) and "newer Python" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        program("raise ValueError('no good')\n")
    assert "ValueError: no good" in str(caught.value) and "newer Python" not in str(caught.value)


class Hostile:
    """An object whose attributes all raise: listing ASGI apps must not."""

    def __getattribute__(self, name):
        raise RuntimeError("no")


def test_asgi_callable_detection():
    async def three(scope, receive, send):
        pass

    async def defaults(scope, receive, send, extra=None):
        pass

    async def two(scope, receive):
        pass

    def sync(scope, receive, send):
        pass

    assert is_asgi_callable(three) and is_asgi_callable(defaults)
    assert not is_asgi_callable(two) and not is_asgi_callable(sync)
    assert not is_asgi_callable(Hostile()) and not is_asgi_callable(sys) and not is_asgi_callable(dict)
