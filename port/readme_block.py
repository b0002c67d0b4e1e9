"""A generated block of a text file (README tables), kept between a begin and an end marker.

The writers of README's generated tables (:mod:`parity.layer_table`, :mod:`mfv.bench_readme`) share
this: find the block, compare it with a fresh one, replace it atomically. Markers are whole lines
such as ``<!-- layer-table:begin (...) -->``; the block includes both of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from .atomic import write_text_atomic
from .errors import ToolError

__all__ = ["MarkerError", "current_block", "update_block"]


class MarkerError(ToolError):
    """A file lacks the begin or end marker of the block a tool writes."""


def current_block(text: str, begin: str, end: str) -> str | None:
    """The first block of ``text`` from ``begin`` to the next ``end``, markers included, or None."""
    m = re.search(re.escape(begin) + r".*?" + re.escape(end), text, re.S)
    return m.group(0) if m else None


def update_block(path: str | Path, block: str, begin: str, end: str, *, write: bool) -> bool:
    """Whether ``path``'s block differs from ``block``; with ``write``, replace it (atomically).

    Parameters
    ----------
    path : str or Path
        The file holding the block.
    block : str
        The new block, markers included.
    begin, end : str
        The markers the block starts and ends with.
    write : bool
        Replace the block when it differs; False only compares.

    Returns
    -------
    bool
        True when the file's block was not ``block`` (stale before a write).

    Raises
    ------
    MarkerError
        When the file has no ``begin`` ... ``end`` block; the message names the file and markers.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    old = current_block(text, begin, end)
    if old is None:
        raise MarkerError(f"{path}: no block markers ({begin!r} ... {end!r})")
    if old == block:
        return False
    if write:
        write_text_atomic(path, text.replace(old, block))
    return True
