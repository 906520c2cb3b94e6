"""rootfs-build/PACKAGES.md, what programs are told they find, names exactly the packages
the runtimes and profiles install: every Debian package of packages-lean.txt,
packages-full.txt, packages-debian-12.txt and packages-full-debian-12.txt, every pinned Python distribution of each
runtime's requirements-RUNTIME.txt (the programs') and requirements-init-RUNTIME.txt
(the init's own), and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aleph_runtime.host.vmm.image import RUNTIMES

BUILD = Path(__file__).resolve().parents[2] / "rootfs-build"


def listed(path: Path) -> list[str]:
    return [
        line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()
    ]


def table_rows(heading: str) -> list[list[str]]:
    """The rows of the first table after the `### heading` line, cells stripped of ` and *."""
    text = BUILD.joinpath("PACKAGES.md").read_text()
    section = text.split(f"\n### {heading}\n", 1)
    assert len(section) == 2, f"PACKAGES.md has no '### {heading}' section"
    rows = []
    for line in section[1].split("\n### ", 1)[0].splitlines():
        if line.startswith("|") and not re.match(r"\|\s*-", line):
            rows.append([cell.strip().strip("`*") for cell in line.strip("|").split("|")])
    return rows[1:]  # past the header row


def test_debian_tables_match_the_package_lists():
    assert [row[0] for row in table_rows("Debian packages: lean (and full)")] == listed(
        BUILD / "packages-lean.txt"
    )
    assert [row[0] for row in table_rows("Debian packages: full only")] == listed(BUILD / "packages-full.txt")
    assert [row[0] for row in table_rows("Debian packages: debian-12 only")] == listed(
        BUILD / "packages-debian-12.txt"
    )
    assert [row[0] for row in table_rows("Debian packages: full only, debian-12")] == listed(
        BUILD / "packages-full-debian-12.txt"
    )


def top_level_name(requirement: str) -> str:
    return re.split(r"[=~<>! ]", requirement, maxsplit=1)[0].lower()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_python_table_matches_the_pins(runtime: str):
    heading = f"Python distributions in /opt/aleph/libs: {runtime}"
    pins = [line.split("==") for line in listed(BUILD / f"requirements-{runtime}.txt")]
    rows = table_rows(heading)
    assert [[name, version] for name, version, *_ in rows] == pins
    top_level = {top_level_name(line) for line in listed(BUILD / f"requirements-{runtime}.in")}
    text = BUILD.joinpath("PACKAGES.md").read_text().split(f"\n### {heading}\n", 1)[1].split("\n### ", 1)[0]
    bold = {name.lower() for name in re.findall(r"^\| \*\*([^*]+)\*\* \|", text, re.M)}
    assert bold == top_level


def test_init_table_matches_the_pins():
    rows = table_rows("Ours: the init's libraries in /opt/aleph/init-libs")
    expected = [
        [runtime, *line.split("==")]
        for runtime in RUNTIMES
        for line in listed(BUILD / f"requirements-init-{runtime}.txt")
    ]
    assert [row[:3] for row in rows] == expected
