"""`aleph-runtime packages` and `run`'s packages volume, with real pip (the runtime image's,
inside the image), real wheels built here (one with a C extension, compiled against
Python 3.11's headers) installed from a local directory with --no-index: no network.

The VM test boots the image once and imports the C extension from the built volume.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import aiohttp
import pytest

from tests.cli.conftest import REPOSITORY
from tests.cli.example_checks import stop_cleanly
from tests.outside_network import OUTSIDE_SERVER, LoopbackServer, outside

PYTHON_HEADERS = Path("/usr/include/python3.11")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools are not installed"),
    pytest.mark.skipif(
        shutil.which("gcc") is None or not (PYTHON_HEADERS / "Python.h").is_file(),
        reason="gcc and Python 3.11's headers build the test's C extension",
    ),
]

EXTENSION_C = r"""
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "tinyext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_tinyext(void) { return PyModule_Create(&module); }
"""

APP = """\
import tinylib, tinyext

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{tinylib.answer()} {tinyext.__file__} {tinylib.__cached__} {globals().get('MARK')}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


def make_wheel(directory: Path, name: str, version: str, files: dict[str, bytes], *,
               requires: tuple[str, ...] = (), tag: str = "py3-none-any") -> Path:  # fmt: skip
    """A wheel as pip reads it: the files, METADATA, WHEEL and a RECORD with their hashes."""
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    pure = "true" if tag == "py3-none-any" else "false"
    contents = {
        **files,
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: {pure}\nTag: {tag}\n".encode(),
    }
    record = ""
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    contents[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    wheel = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return wheel


def make_sdist(directory: Path, name: str, backend: str) -> Path:
    """An sdist `name` 1.0 built by `backend` (an in-tree PEP 517 backend, no build requirements)."""
    root = directory / f"{name}-1.0"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        f'[project]\nname = "{name}"\nversion = "1.0"\n'
    )
    (root / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (root / "backend.py").write_text(backend)
    sdist = directory / f"{name}-1.0.tar.gz"
    subprocess.run(["tar", "-czf", str(sdist), "-C", str(directory), root.name], check=True)
    shutil.rmtree(root)
    return sdist


#: A build that compiles C with `cc`: the lean image has none.
NEEDS_CC_BACKEND = """\
import pathlib, subprocess
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    pathlib.Path('needscc.c').write_text('int needscc(void) { return 1; }\\n')
    subprocess.run(['cc', '-shared', '-o', 'needscc.so', 'needscc.c'], check=True)
    raise RuntimeError('unreachable in this test')
"""


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """tinyext 1.0 (a C extension), tinylib 1.0 (pure, needs tinyext), wantsnewer 1.0 (needs
    tinyext>=2: a conflict), idna 9.9.9 (a version the image does not have), needscc (an sdist)."""
    directory = tmp_path_factory.mktemp("wheels")
    build = tmp_path_factory.mktemp("build")
    (build / "tinyext.c").write_text(EXTENSION_C)
    library = build / "tinyext.cpython-311-x86_64-linux-gnu.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-I{PYTHON_HEADERS}", "-o", str(library),
                    str(build / "tinyext.c")], check=True)  # fmt: skip
    make_wheel(
        directory, "tinyext", "1.0", {library.name: library.read_bytes()}, tag="cp311-cp311-linux_x86_64"
    )
    make_wheel(directory, "tinylib", "1.0",
               {"tinylib/__init__.py": b"import tinyext\n\ndef answer():\n    return tinyext.answer()\n"},
               requires=("tinyext",))  # fmt: skip
    make_wheel(directory, "wantsnewer", "1.0", {"wantsnewer.py": b""}, requires=("tinyext>=2",))
    make_wheel(directory, "idna", "9.9.9", {"idna/__init__.py": b"__version__ = '9.9.9'\n"})
    make_sdist(directory, "needscc", NEEDS_CC_BACKEND)
    return directory


def packages_command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY / "runtime"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "aleph_runtime.host.node.cli", "packages", *args],
        capture_output=True, text=True, env=environment, timeout=900,
    )  # fmt: skip


def offline(wheelhouse: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheelhouse)]


def listing(image: Path) -> list[str]:
    out = subprocess.run(
        ["unsquashfs", "-l", "-d", "R", str(image)], capture_output=True, text=True, check=True
    )
    return [line[2:] for line in out.stdout.splitlines() if line.startswith("R/")]


def test_volume_from_local_wheels_is_compiled_and_reproducible(wheelhouse, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tinylib\n")
    first = packages_command(str(requirements), "-o", str(tmp_path / "a.squashfs"), *offline(wheelhouse))
    assert first.returncode == 0, first.stderr
    files = listing(tmp_path / "a.squashfs")
    assert "tinyext.cpython-311-x86_64-linux-gnu.so" in files
    assert "tinylib/__pycache__/__init__.cpython-311.pyc" in files
    assert "tinylib/__pycache__/__init__.cpython-311.opt-2.pyc" in files
    # Unchecked-hash bytecode (PEP 552 flags 0b01): valid on a read-only volume whatever the times.
    tree = tmp_path / "tree"
    subprocess.run(["unsquashfs", "-q", "-d", str(tree), str(tmp_path / "a.squashfs")], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    pyc = (tree / "tinylib/__pycache__/__init__.cpython-311.opt-2.pyc").read_bytes()
    assert int.from_bytes(pyc[4:8], "little") == 0b01
    sha = hashlib.sha256((tmp_path / "a.squashfs").read_bytes()).hexdigest()
    assert f"sha256 {sha}" in first.stdout
    assert "aleph file upload" in first.stdout
    assert "--immutable-volume mount=/opt/packages,ref=" in first.stdout

    # The same inputs, built again: the same bytes.
    second = packages_command(str(tmp_path), "-o", str(tmp_path / "b.squashfs"), *offline(wheelhouse))
    assert second.returncode == 0, second.stderr
    assert hashlib.sha256((tmp_path / "b.squashfs").read_bytes()).hexdigest() == sha


def test_a_requirements_file_including_another(wheelhouse, tmp_path):
    (tmp_path / "requirements.txt").write_text("-r base.txt\n")
    (tmp_path / "base.txt").write_text("tinyext==1.0\n")
    result = packages_command(str(tmp_path), "-o", str(tmp_path / "i.squashfs"), *offline(wheelhouse))
    assert result.returncode == 0, result.stderr
    assert "1 distributions for debian-12 (lean): tinyext 1.0" in result.stdout


def test_pyproject_dependencies_and_a_version_the_image_has_otherwise(wheelhouse, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "0"\ndependencies = ["idna==9.9.9"]\n'
    )
    result = packages_command(str(tmp_path / "pyproject.toml"), "-o", str(tmp_path / "p.squashfs"),
                              *offline(wheelhouse))  # fmt: skip
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "idna:" in line)
    assert "the volume has 9.9.9, the runtime image 3." in warning
    assert "the program imports 9.9.9" in warning


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("no-such-package-here", "No matching distribution found for no-such-package-here"),
        ("tinyext==1.0\nwantsnewer\n", "ResolutionImpossible"),
        ("needscc", "No such file or directory: 'cc'"),
    ],
    ids=["unknown", "conflict", "needs-a-compiler"],
)
def test_what_pip_cannot_install_is_one_message(wheelhouse, tmp_path, requirement, expected):
    (tmp_path / "requirements.txt").write_text(requirement + "\n")
    out = tmp_path / "out.squashfs"
    result = packages_command(str(tmp_path), "-o", str(out), *offline(wheelhouse))
    assert result.returncode != 0
    assert "pip could not install" in result.stderr
    assert expected in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["requirements.txt"]  # nothing written
    if requirement == "needscc":
        assert "--profile full" in result.stderr


def test_an_unknown_runtime_is_refused(tmp_path):
    (tmp_path / "requirements.txt").write_text("six\n")
    result = packages_command(str(tmp_path), "-o", str(tmp_path / "o.squashfs"), "--runtime", "debian-99")
    assert result.returncode == 2
    assert "invalid choice: 'debian-99'" in result.stderr
    assert "debian-12" in result.stderr and "debian-13" in result.stderr  # the known ones, listed


#: A package whose build (the author's code, or anyone's: pip runs it) looks for this
#: machine from where pip runs it, and ships what it found as spy_facts.json.
SPY_BACKEND = """\
import base64, errno, hashlib, json, os, socket, zipfile

def facts():
    found = {{"uid_map": open("/proc/self/uid_map").read().split()[:3],
              "host_file": os.path.exists({host_file!r})}}
    try:
        socket.create_connection(("127.0.0.1", {loopback_port}), timeout=2).close()
        found["host_loopback"] = "connected"
    except OSError as error:
        found["host_loopback"] = errno.errorcode.get(error.errno, type(error).__name__)
    try:
        os.kill({host_pid}, 0)
        found["host_process"] = "seen"
    except ProcessLookupError:
        found["host_process"] = "none"
    except PermissionError:
        found["host_process"] = "seen"
    return found

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    info = "spy-1.0.dist-info"
    files = {{
        "spy_facts.json": json.dumps(facts()).encode(),
        info + "/METADATA": b"Metadata-Version: 2.1\\nName: spy\\nVersion: 1.0\\n",
        info + "/WHEEL": b"Wheel-Version: 1.0\\nGenerator: spy\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{{path}},sha256={{digest}},{{len(data)}}\\n"
    files[info + "/RECORD"] = (record + info + "/RECORD,,\\n").encode()
    name = "spy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return name
"""


def test_a_packages_build_reaches_nothing_of_this_machine(tmp_path_factory):
    """pip runs in dev mode's container: a package's build, run as root there, sees no file of
    this machine's but what is bound, no process of its, nothing on its loopback; and its root
    is the host's root shifted (issue 25's mapping)."""
    secret = tmp_path_factory.mktemp("host-only") / "secret"
    secret.write_text("the host's")
    loopback = LoopbackServer()
    wheels, work = tmp_path_factory.mktemp("spy-wheels"), tmp_path_factory.mktemp("spy")
    try:
        backend = SPY_BACKEND.format(host_file=str(secret), loopback_port=loopback.port, host_pid=os.getpid())
        make_sdist(wheels, "spy", backend)
        (work / "requirements.txt").write_text("spy\n")
        # Not --no-index: the container has its network (pip's settings say where to look).
        env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
        result = packages_command(str(work), "-o", str(work / "spy.squashfs"), env=env)
        assert result.returncode == 0, result.stderr
        tree = work / "tree"
        subprocess.run(["unsquashfs", "-q", "-d", str(tree), str(work / "spy.squashfs")], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        facts = json.loads((tree / "spy_facts.json").read_text())
    finally:
        loopback.close()
    assert facts == {
        "uid_map": ["0", "1000000000", "65536"],
        "host_file": False,
        "host_loopback": "ECONNREFUSED",
        "host_process": "none",
    }
    assert loopback.accepted == 0


#: A PEP 503 index at the outside server's port 8000 (sys.argv[2]: the directory it serves).
INDEX_SERVER_CODE = """
import functools, http.server
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
server = http.server.ThreadingHTTPServer((sys.argv[1], 8000), handler)
print("ready", flush=True)
server.serve_forever()
"""


def test_pip_reaches_an_index_through_the_containers_network(tmp_path_factory):
    """The index is another machine's (a network namespace of its own, through a veth pair):
    the container's pasta reaches it as it reaches PyPI, with this machine's resolvers and
    routes, and pip installs from it."""
    index = tmp_path_factory.mktemp("index")
    index.chmod(0o755)
    (index / "files").mkdir()
    (index / "simple" / "onlyoutside").mkdir(parents=True)
    wheel = make_wheel(index / "files", "onlyoutside", "1.0", {"onlyoutside.py": b"WHERE = 'outside'\n"})
    (index / "simple" / "onlyoutside" / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}">{wheel.name}</a></body></html>\n'
    )
    for path in index.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    work = tmp_path_factory.mktemp("indexed")
    (work / "requirements.txt").write_text("onlyoutside==1.0\n")
    env = {
        "PIP_INDEX_URL": f"http://{OUTSIDE_SERVER}:8000/simple/", "PIP_TRUSTED_HOST": OUTSIDE_SERVER,
        "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "",
    }  # fmt: skip
    with outside(INDEX_SERVER_CODE, str(index)):
        result = packages_command(str(work), "-o", str(work / "o.squashfs"), env=env)
    assert result.returncode == 0, result.stderr
    assert "1 distributions for debian-12 (lean): onlyoutside 1.0" in result.stdout
    assert "onlyoutside.py" in listing(work / "o.squashfs")


@pytest.fixture
def nobody_home():
    """A home for nobody that nobody can reach (pytest's temporary directories are root's alone)."""
    with tempfile.TemporaryDirectory(prefix="aleph-nobody-") as home:
        yield Path(home)


def test_a_user_builds_a_volume_too(wheelhouse, nobody_home):
    """As a non-root user (nobody): the container maps that user alone as its root, and the
    image is unpacked into their own cache."""
    home = nobody_home
    shutil.copytree(wheelhouse, home / "wheels")
    (home / "requirements.txt").write_text("tinylib\n")
    for path in [home, *home.rglob("*")]:
        os.chown(path, 65534, 65534)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "aleph_runtime.host.node.cli", "packages", str(home), "-o", str(home / "out.squashfs"),
         "--no-index", "--find-links", str(home / "wheels")],
        env={"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
             "PYTHONPATH": str(REPOSITORY / "runtime")},
        capture_output=True, text=True, timeout=900, cwd=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 distributions for debian-12 (lean): tinyext 1.0, tinylib 1.0" in result.stdout
    assert "tinyext.cpython-311-x86_64-linux-gnu.so" in listing(home / "out.squashfs")


def program_with_requirements(directory: Path, requirements: str) -> Path:
    directory.mkdir()
    (directory / "main.py").write_text(APP)
    (directory / "requirements.txt").write_text(requirements)
    return directory


async def test_run_builds_caches_and_mounts_the_volume_in_dev_mode(wheelhouse, cli_factory, short_dir):
    program = program_with_requirements(short_dir / "app", "tinylib\n")
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)}
    for attempt in ("built", "cached"):
        cli = await cli_factory("--mode", "dev", "--port", "0", str(program), env=env)
        url = await cli.wait_url(300)
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            body = await response.text()
        assert response.status == 200, body
        assert body.startswith("42 /opt/packages/tinyext.cpython-311-x86_64-linux-gnu.so ")
        assert " /opt/packages/tinylib/__pycache__/__init__.cpython-311.opt-2.pyc " in body
        assert (
            f"packages at /opt/packages: 2 distributions from {program}/requirements.txt ({attempt}"
            in cli.output()
        )
        await stop_cleanly(cli)

    # A requirement pip cannot install: the command stops with pip's words, nothing is cached.
    cache = short_dir / "state" / "cache" / "packages"
    before = sorted(cache.iterdir())
    (program / "requirements.txt").write_text("tinylib\nno-such-package-here\n")
    cli = await cli_factory("--mode", "dev", "--port", "0", str(program), env=env)
    assert await cli.wait(300) == 2, cli.output()
    assert "No matching distribution found for no-such-package-here" in cli.output()
    assert sorted(cache.iterdir()) == before


def test_build_writes_the_code_with_bytecode_and_the_volume(wheelhouse, tmp_path):
    program = program_with_requirements(tmp_path / "app", "tinylib\n")
    out = tmp_path / "publish"
    result = subprocess.run(
        [sys.executable, "-m", "aleph_runtime.host.node.cli", "build", str(program), "-o", str(out)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY / "runtime"), "PIP_NO_INDEX": "1",
             "PIP_FIND_LINKS": str(wheelhouse)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(out / "code.zip") as archive:
        assert f"__pycache__/main.{sys.implementation.cache_tag}.opt-2.pyc" in archive.namelist()
    assert "tinyext.cpython-311-x86_64-linux-gnu.so" in listing(out / "packages.squashfs")
    assert f"aleph file upload {out}/packages.squashfs" in result.stdout
    assert (
        f"aleph program upload {out}/code.zip main:app --immutable-volume mount=/opt/packages,ref="
        in result.stdout
    )


async def test_watch_rebuilds_the_volume_when_the_requirements_change(wheelhouse, cli_factory, short_dir):
    program = short_dir / "app"
    program.mkdir()
    (program / "main.py").write_text(
        "import importlib.util\n\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n        return\n"
        "    body = str(importlib.util.find_spec('tinylib') is not None).encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    )
    (program / "requirements.txt").write_text("tinyext\n")
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)}
    cli = await cli_factory("--mode", "dev", "--port", "0", "--watch", str(program), env=env)
    url = await cli.wait_url(300)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert await response.text() == "False"
        (program / "requirements.txt").write_text("tinylib\n")
        for _ in range(240):
            await asyncio.sleep(0.5)
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if await response.text() == "True":
                        break
        else:
            raise AssertionError(f"the new requirements were never installed:\n{cli.output()}")
    assert "2 distributions from" in cli.output()
    await stop_cleanly(cli)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
async def test_packages_option_and_the_volume_in_a_vm(images, wheelhouse, cli_factory, short_dir, tmp_path):
    """One boot: a volume built by the command, given by --packages, imported by the image's Python;
    the code a zip whose bytecode (packed as `run` packs it) says otherwise than its main.py: the
    guest's `python3 -OO` runs the bytecode."""
    from aleph_runtime.host.program import zip_directory

    (tmp_path / "requirements.txt").write_text("tinylib\n")
    volume = tmp_path / "packages.squashfs"
    built = packages_command(str(tmp_path), "-o", str(volume), *offline(wheelhouse))
    assert built.returncode == 0, built.stderr
    program = short_dir / "app"
    program.mkdir()
    (program / "main.py").write_text(APP + 'MARK = "bytecode"\n')
    code = short_dir / "code.zip"
    with zipfile.ZipFile(io.BytesIO(zip_directory(program, bytecode=True))) as packed, \
            zipfile.ZipFile(code, "w") as archive:  # fmt: skip
        for info in packed.infolist():
            data = packed.read(info)
            archive.writestr(
                info, (APP + 'MARK = "source"\n').encode() if info.filename == "main.py" else data
            )
    cli = await cli_factory("--port", "0", "--packages", str(volume), str(code))
    url = await cli.wait_url(600)
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        body = await response.text()
    assert response.status == 200, body
    assert body.startswith("42 /opt/packages/tinyext.cpython-311-x86_64-linux-gnu.so ")
    assert body.endswith(" bytecode")
    assert f"packages at /opt/packages: {volume} (--packages)" in cli.output()
    await stop_cleanly(cli)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
async def test_run_builds_the_volume_for_a_vm(images, wheelhouse, cli_factory, short_dir):
    """One boot: PATH's requirements.txt built into the volume, a drive at /opt/packages."""
    program = program_with_requirements(short_dir / "app", "tinylib\n")
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)}
    cli = await cli_factory("--port", "0", str(program), env=env)
    url = await cli.wait_url(600)
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        body = await response.text()
    assert response.status == 200, body
    assert body.startswith("42 /opt/packages/tinyext.cpython-311-x86_64-linux-gnu.so ")
    assert f"packages at /opt/packages: 2 distributions from {program}/requirements.txt" in cli.output()
    await stop_cleanly(cli)
