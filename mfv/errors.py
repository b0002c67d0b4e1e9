"""The one exception type for a user's mistake given to mfv (a target, a file, a folder).

A :class:`port.errors.ToolError`, so that every command line reports it as one line with exit
status 2, and a ``ValueError``, so that library callers who caught ``ValueError`` still do.
"""

from __future__ import annotations

from port.errors import ToolError

__all__ = ["MfvError"]


class MfvError(ToolError, ValueError):
    """Bad input to mfv: a target outside its layer, an unknown layer, an unreadable image..."""
