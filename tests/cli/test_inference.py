"""How `aleph-runtime run` reads PATH, --volume and --env: no processes, only files."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import zipfile

import pytest

from aleph_runtime.host.errors import NodeError
from aleph_runtime.host.node.inference import entrypoint_from_listing, infer_program
from aleph_runtime.host.node.volumes import parse_env, parse_size_mib, parse_volume
from tests.cli.conftest import EXAMPLES


def test_examples():
    fastapi = infer_program(EXAMPLES / "fastapi_app")
    assert (fastapi.encoding, fastapi.entrypoint, fastapi.interface) == ("zip", "main:app", "asgi")
    executable = infer_program(EXAMPLES / "executable")
    assert (executable.encoding, executable.entrypoint, executable.interface) == (
        "zip",
        "run.sh",
        "executable",
    )
    hello = infer_program(EXAMPLES / "hello" / "main.py")
    assert (hello.encoding, hello.entrypoint, hello.interface) == ("plain", "main:app", "asgi")
    assert hello.code == (EXAMPLES / "hello" / "main.py").read_bytes()


def test_listing_rules():
    assert entrypoint_from_listing({"main.py": False, "run.sh": True})[0] == "main:app"
    assert entrypoint_from_listing({"run.sh": True, "app.py": False})[0] == "run.sh"
    assert entrypoint_from_listing({"run.sh": False, "app.py": False})[0] == "app:app"  # not executable
    assert entrypoint_from_listing({"server.py": False, "data/x.json": False})[0] == "server:app"
    assert entrypoint_from_listing({"start": True, "lib/helper.py": False})[0] == "start"
    # An archive of a directory: the rules apply inside its only top-level directory.
    assert entrypoint_from_listing({"proj/main.py": False, "proj/util.py": False})[0] == "proj.main:app"
    assert entrypoint_from_listing({"proj/run.sh": True})[0] == "proj/run.sh"
    with pytest.raises(NodeError, match="give --entrypoint"):
        entrypoint_from_listing({"a.py": False, "b.py": False})


def test_python_file_named_after_its_module(tmp_path):
    path = tmp_path / "my_app.py"
    path.write_text("app = None\n")
    assert infer_program(path).entrypoint == "my_app:app"
    odd = tmp_path / "my-app.py"
    odd.write_text("app = None\n")
    assert infer_program(odd).entrypoint == "main:app"


def test_single_executable_file(tmp_path):
    path = tmp_path / "server"
    path.write_bytes(b"#!/bin/sh\nexec python3 -m http.server 8080\n")
    program = infer_program(path)
    assert (program.encoding, program.entrypoint, program.interface) == ("plain", "server", "executable")


def test_archives(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("launch/run.sh")
        info.external_attr = 0o100755 << 16
        archive.writestr(info, "#!/bin/sh\n")
    (tmp_path / "code.zip").write_bytes(buffer.getvalue())
    program = infer_program(tmp_path / "code.zip")
    assert (program.encoding, program.entrypoint, program.interface) == ("zip", "launch/run.sh", "executable")
    assert program.code == buffer.getvalue()

    with tarfile.open(tmp_path / "code.tar.gz", "w:gz") as archive:
        data = b"app = None\n"
        info = tarfile.TarInfo("./app.py")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    program = infer_program(tmp_path / "code.tar.gz")
    assert (program.encoding, program.entrypoint) == ("tar", "app:app")


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools are not installed")
def test_squashfs_image(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "run.sh").write_text("#!/bin/sh\n")
    (code / "run.sh").chmod(0o755)
    subprocess.run(["mksquashfs", str(code), str(tmp_path / "code.img"), "-quiet", "-noappend"], check=True)
    program = infer_program(tmp_path / "code.img")
    assert (program.encoding, program.entrypoint, program.interface) == ("squashfs", "run.sh", "executable")
    assert program.image == tmp_path / "code.img" and program.code is None
    with pytest.raises(NodeError, match="squashfs"):
        infer_program(tmp_path / "code.img", encoding="zip")


def test_overrides(tmp_path):
    program = infer_program(EXAMPLES / "fastapi_app", entrypoint="main:http_app", encoding="tar")
    assert (program.encoding, program.entrypoint, program.interface) == ("tar", "main:http_app", "asgi")
    assert infer_program(EXAMPLES / "fastapi_app", interface="binary").interface == "executable"
    with pytest.raises(NodeError, match="plain"):
        infer_program(EXAMPLES / "fastapi_app", encoding="plain")
    with pytest.raises(NodeError, match="does not exist"):
        infer_program(tmp_path / "missing")


def test_volumes(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    volume = parse_volume(f"/opt/lib={lib}")
    assert (volume.mount, volume.source, volume.read_only) == ("/opt/lib", lib, True)
    volume = parse_volume(f"mount=/opt/venv/,source={lib}")
    assert (volume.mount, volume.source) == ("/opt/venv", lib)
    volume = parse_volume("mount=/var/lib/db,persistent=db,size=1G")
    assert (volume.mount, volume.persistent, volume.size_mib, volume.read_only) == (
        "/var/lib/db",
        "db",
        1024,
        False,
    )
    assert parse_volume("mount=/data2,name=x").persistent == "x"
    for bad, message in [
        ("relative=/x", "absolute"),
        ("/opt/lib", "MOUNT=SOURCE"),
        (f"/={lib}", "cannot be a volume"),
        ("mount=/a,persistent=../x", "name"),
        (f"mount=/a,persistent=x,source={lib}", "either"),
        (f"mount=/a,source={lib},size=1G", "persistent volumes only"),
        (f"/a={tmp_path / 'missing'}", "does not exist"),
        ("mount=/a,colour=blue", "not one of"),
    ]:
        with pytest.raises(NodeError, match=message):
            parse_volume(bad)


def test_env_and_sizes():
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(NodeError):
        parse_env(["1A=x"])
    with pytest.raises(NodeError):
        parse_env(["novalue"])
    assert [parse_size_mib(s) for s in ("64", "64M", "1G", "2GiB", "512K")] == [64, 64, 1024, 2048, 1]


def test_kernel_option_reaches_the_node_options():
    """`--kernel debian` keeps Debian's kernel and initramfs for a VM; the default (None)
    is the node-like kernel, chosen where the machine is built."""
    from aleph_runtime.host.node.cli import _options, build_parser

    path = str(EXAMPLES / "hello" / "main.py")
    assert _options(build_parser().parse_args(["run", path])).kernel is None
    assert _options(build_parser().parse_args(["run", "--kernel", "debian", path])).kernel == "debian"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--kernel", "firecracker", path])
