"""The pure parts of the packages volume and of code packed with its bytecode: where the
requirements come from, the cache key, this machine's pip settings, the warnings, and
bytecode a Python really loads (tests/cli/test_packages.py runs pip and mksquashfs)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import pytest

from aleph_runtime.host.errors import NodeError
from aleph_runtime.host.node.packages import (
    MAX_IMMUTABLE_VOLUME_BYTES,
    compiler_hint,
    find_requirements,
    host_pip_settings,
    local_paths,
    prune_cache,
    read_requirements,
    size_warning,
    version_warnings,
)
from aleph_runtime.host.program import bytecode_matches, tar_directory, zip_directory


def test_requirements_txt_first_then_pyproject_dependencies(tmp_path):
    assert find_requirements(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n')
    assert find_requirements(tmp_path) is None  # no dependencies: no volume
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["fastapi>=0.100", "six"]\n')
    found = find_requirements(tmp_path)
    assert found.source.name == "pyproject.toml" and found.text == "fastapi>=0.100\nsix\n"
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    assert find_requirements(tmp_path).source.name == "requirements.txt"
    assert read_requirements(tmp_path / "pyproject.toml").text == "fastapi>=0.100\nsix\n"
    with pytest.raises(NodeError, match="does not exist"):
        read_requirements(tmp_path / "missing.txt")
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = "six"\n')
    with pytest.raises(NodeError, match="must be a list"):
        read_requirements(tmp_path / "pyproject.toml")


def test_the_cache_key_follows_requirements_runtime_and_profile(tmp_path):
    (tmp_path / "requirements.txt").write_text("six\n")
    requirements = find_requirements(tmp_path)
    keys = {requirements.key("debian-12", "lean"), requirements.key("debian-12", "full"),
            requirements.key("debian-13", "lean")}  # fmt: skip
    assert len(keys) == 3
    (tmp_path / "requirements.txt").write_text("six\nidna\n")
    assert find_requirements(tmp_path).key("debian-12", "lean") not in keys
    # An included file is part of the key.
    (tmp_path / "requirements.txt").write_text("-r base.txt\n")
    (tmp_path / "base.txt").write_text("six\n")
    before = find_requirements(tmp_path).key("debian-12", "lean")
    (tmp_path / "base.txt").write_text("six==1.16.0\n")
    assert find_requirements(tmp_path).key("debian-12", "lean") != before


def test_pip_settings_from_files_then_variables(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    index = tmp_path / "index" / "simple"
    wheels.mkdir()
    index.mkdir(parents=True)
    config = tmp_path / "pip.conf"
    config.write_text(
        f"[global]\nextra-index-url = file://{index}\n  https://example.org/simple\ncert = /x\n"
    )
    for variable in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_TRUSTED_HOST"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "none"))
    settings = host_pip_settings()
    assert settings["PIP_EXTRA_INDEX_URL"] == f"file://{index} https://example.org/simple"
    assert settings["PIP_FIND_LINKS"] == str(wheels)
    assert "PIP_CERT" not in settings  # the CA bundle is copied in, not named
    assert set(local_paths(settings)) == {wheels, index.parent}


def test_warnings_name_both_versions_and_the_size_limit():
    warnings = version_warnings(
        {"Pydantic": "2.9.0", "six": "1.16.0"}, {"pydantic": "2.8.2", "six": "1.16.0"}
    )
    assert warnings == [
        "Pydantic: the volume has 2.9.0, the runtime image 2.8.2; the program imports 2.9.0 "
        "(/opt/packages comes first on sys.path)"
    ]
    assert size_warning(10 << 20) is None
    assert "--storage-engine ipfs" in size_warning(200 << 20)
    assert "no node can fetch it" in size_warning(MAX_IMMUTABLE_VOLUME_BYTES + 1)
    assert compiler_hint("FileNotFoundError: [Errno 2] No such file or directory: 'cc'", None)
    assert compiler_hint("FileNotFoundError: [Errno 2] No such file or directory: 'cc'", "full") == ""
    assert compiler_hint("No matching distribution", "lean") == ""


@pytest.mark.parametrize("packer", ["zip", "tar"])
def test_packed_code_carries_bytecode_python_loads_without_the_source(tmp_path, packer):
    """Unchecked-hash bytecode is used as is: a changed source beside it is not even read."""
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "__init__.py").write_text('"""Docstring."""\nVALUE = "compiled"\nDOC = __doc__\n')
    (code / "broken.py").write_text("def (:\n")  # not Python: packed, without bytecode
    out = tmp_path / "out"
    if packer == "zip":
        with zipfile.ZipFile(io.BytesIO(zip_directory(code, bytecode=True))) as archive:
            names = set(archive.namelist())
            archive.extractall(out)
    else:
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(tar_directory(code, bytecode=True))) as archive:
            names = set(archive.getnames())
            archive.extractall(out)  # our own archive
    tag = sys.implementation.cache_tag
    assert f"pkg/__pycache__/__init__.{tag}.pyc" in names
    assert f"pkg/__pycache__/__init__.{tag}.opt-2.pyc" in names
    assert not any(name.startswith("__pycache__/broken") for name in names)
    (out / "pkg" / "__init__.py").write_text('VALUE = "source"\nDOC = None\n')
    for flags, expected in (([], "compiled Docstring."), (["-OO"], "compiled None")):
        result = subprocess.run(
            [sys.executable, *flags, "-B", "-c", "import pkg; print(pkg.VALUE, pkg.DOC)"],
            cwd=out, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert result.stdout.strip() == expected


def test_bytecode_matches_the_runtimes_minor_version():
    major, minor = sys.version_info[:2]
    assert bytecode_matches(f"{major}.{minor}.2")
    assert not bytecode_matches(f"{major}.{minor + 1}")
    assert not bytecode_matches(None)


def test_the_cache_keeps_the_newest_volumes(tmp_path):
    import os

    for age in range(5):
        for suffix in (".squashfs", ".json"):
            path = tmp_path / f"key{age}{suffix}"
            path.write_text("x")
            os.utime(path, ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    prune_cache(tmp_path, keep=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "key0.json",
        "key0.squashfs",
        "key1.json",
        "key1.squashfs",
    ]
