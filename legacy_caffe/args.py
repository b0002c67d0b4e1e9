"""Checks of ``legacy_caffe`` arguments, all made before any engine, image or root is touched.

Each failure is one :class:`~port.errors.UsageError` line naming the option and the file, so a
typo costs nothing: no build, no download, nothing written to the exchange folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from port.errors import UsageError


def readable_file(path: Path | None, flag: str) -> Path | None:
    """``path`` if it is a file this process can read (None passes through)."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, not a file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot be read ({exc.strerror or exc})") from None
    return path


def python_folder(path: Path | None) -> Path | None:
    """A ``--python-path`` folder holding the Python layers' ``*.py`` modules."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--python-path {path}: no such folder")
    if not path.is_dir():
        raise UsageError(f"--python-path {path}: is a file, not a folder of .py modules")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(f"--python-path {path}: cannot be read")
    modules = sorted(path.glob("*.py"))
    if not modules:
        raise UsageError(f"--python-path {path}: holds no .py modules (the Python layers')")
    for module in modules:
        readable_file(module, "--python-path")
    return path


def output_folder(path: Path | None, flag: str = "--out") -> Path | None:
    """A folder that exists or can be made: not a file, under a writable existing ancestor."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {ancestor} is not writable")
    return path


def blob_in_prototxt(blob: str, prototxt: Path) -> None:
    """``--blob`` must be ``auto`` or a blob the definition declares (a top or an input)."""
    if blob == "auto":
        return
    if not blob or not re.fullmatch(r"[^\s\"']+", blob):
        raise UsageError(f"--blob {blob!r}: not a blob name")
    text = prototxt.read_text(errors="replace")
    if not re.search(rf"\b(top|input)\s*:\s*[\"']{re.escape(blob)}[\"']", text):
        raise UsageError(f"--blob {blob}: {prototxt} declares no blob of that name (top/input)")


def non_negative(value: int, flag: str) -> int:
    if value < 0:
        raise UsageError(f"{flag} {value}: must be 0 or more")
    return value
