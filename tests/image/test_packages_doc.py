"""rootfs-build/PACKAGES.md, what programs are told they find, names exactly the packages
the profiles install: every Debian package of packages-lean.txt and packages-full.txt
and every pinned Python distribution of requirements.txt, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_python_table_matches_the_pins():
    pins = [line.split("==") for line in listed(BUILD / "requirements.txt")]
    rows = table_rows("Python distributions in /opt/aleph/libs (both profiles)")
    assert [[name, version] for name, version, *_ in rows] == pins
    top_level = {line.split("==")[0].lower() for line in listed(BUILD / "requirements.in")}
    bold = {
        name.lower()
        for name in re.findall(r"^\| \*\*([^*]+)\*\* \|", BUILD.joinpath("PACKAGES.md").read_text(), re.M)
    }
    assert bold == top_level
