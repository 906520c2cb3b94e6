"""Fast checks of the build scripts and init0 (no root, no build): they parse as POSIX
sh (dash and busybox), the Debian mirror comes from apt's sources in both formats, and
the Python wrapper validates its arguments. Run alone: pytest tests/image/test_scripts.py"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [
    REPO / "init/init0.sh",
    *sorted((REPO / "rootfs-build").glob("*.sh")),
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("shell", ["dash", "busybox sh"])
def test_parses_as_posix_sh(script: Path, shell: str):
    cmd = shell.split()
    if not shutil.which(cmd[0]):
        pytest.skip(f"{cmd[0]} not installed")
    result = subprocess.run([*cmd, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def mirrors(tmp_path: Path, files: dict[str, str]) -> tuple[str, str]:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    script = f'. "{REPO}/rootfs-build/common.sh"; debian_mirror; echo "sec=$(debian_security_mirror)"'
    result = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "APT_ETC": str(etc), "ALEPH_RUNTIME_CACHE": str(tmp_path / "cache")},
    )
    main, sec = result.stdout.splitlines()
    return main, sec.removeprefix("sec=")


def test_mirror_from_deb822_sources(tmp_path: Path):
    assert mirrors(
        tmp_path,
        {
            "sources.list.d/debian.sources": (
                "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
                "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
                "Suites: bookworm-security\nComponents: main\n"
            ),
            "sources.list.d/other.sources": "Types: deb\nURIs: https://elsewhere.example/apt\nSuites: nodistro\n",
        },
    ) == ("http://mirror.example/debian", "http://mirror.example/debian-security")


def test_mirror_from_one_line_sources(tmp_path: Path):
    assert mirrors(
        tmp_path,
        {
            "sources.list": (
                "deb [arch=amd64 signed-by=/x.gpg] http://m.example/debian bookworm main\n"
                "deb http://m.example/debian-security bookworm-security main\n"
            )
        },
    ) == ("http://m.example/debian", "http://m.example/debian-security")


def test_wrapper_rejects_unknown_profile_and_compression():
    with pytest.raises(ValueError):
        image.ensure_rootfs("huge")
    with pytest.raises(ValueError):
        image.ensure_rootfs("lean", "brotli")


def test_kernel_cmdline_has_no_nomodule():
    assert "nomodule" not in image.KERNEL_CMDLINE.split()
    assert "root=/dev/vda" in image.KERNEL_CMDLINE.split()


def test_unknown_runtime_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown runtime 'debian-11': one of debian-12, debian-13"):
        image.ensure_rootfs(runtime="debian-11")
    result = subprocess.run(
        [str(REPO / "rootfs-build/build-rootfs.sh"), "--runtime", "debian-11"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown runtime debian-11 (known: debian-12, debian-13)"


def test_python_and_shell_name_the_same_runtimes():
    script = (
        f'. "{REPO}/rootfs-build/common.sh"; echo $RUNTIMES; for r in $RUNTIMES; do runtime_suite $r; done'
    )
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    names, *suites = result.stdout.split("\n")[:-1]
    assert tuple(names.split()) == image.RUNTIMES
    assert suites == ["bookworm", "trixie"]
