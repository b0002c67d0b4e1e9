"""The one package list shared by docker/Dockerfile and the debootstrap root."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

PACKAGES_FILE = Path(__file__).resolve().parent / "packages.txt"

# Debian package names: lower case, digits, '+', '-', '.'; at least two characters.
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


class PackageListError(ValueError):
    """The package list is malformed (bad name, duplicate); says which line."""


def parse_packages(text: str, *, source: str = "packages.txt") -> list[str]:
    """Package names in file order; blank lines and '#' comments (whole-line or trailing) skipped."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line.split()) != 1:
            raise PackageListError(f"{source}:{lineno}: one package per line, got {line!r}")
        if not _NAME.match(line):
            raise PackageListError(f"{source}:{lineno}: {line!r} is not a Debian package name")
        if line in seen:
            raise PackageListError(
                f"{source}:{lineno}: {line!r} already listed on line {seen[line]}"
            )
        seen[line] = lineno
        names.append(line)
    if not names:
        raise PackageListError(f"{source}: no packages listed")
    return names


def read_packages(path: Path = PACKAGES_FILE) -> list[str]:
    """Read and validate the package list file."""
    return parse_packages(Path(path).read_text(), source=str(path))


def packages_digest(names: list[str]) -> str:
    """Order-independent digest, so the build marker notices when the list changes."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
