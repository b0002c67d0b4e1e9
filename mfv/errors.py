"""The one exception type for a user's mistake given to mfv (a target, a file, a folder).

A ``ValueError`` so that library callers who caught ``ValueError`` still do; the command line
prints it as one line and exits with status 2.
"""

from __future__ import annotations

__all__ = ["MfvError"]


class MfvError(ValueError):
    """Bad input to mfv: a target outside its layer, an unknown layer, an unreadable image..."""
