"""Where the project's folders are: the repository root, its cache, and the shared reference folder.

The one place that knows the layout (a checkout with ``cache/`` inside and ``shared/`` beside it), so
that no module computes it from its own ``__file__``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "repo_root", "shared_root"]

_REPO = Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The repository root: the folder holding ``port/``, ``golden/`` and ``cache/``."""
    return _REPO


def cache_root() -> Path:
    """``<repo>/cache``: regenerable files (the Caffe root, cached goldens, parity reports)."""
    return _REPO / "cache"


def shared_root() -> Path:
    """Folder holding ``reference/`` and ``spec/`` (``$CAFFE_MFV_SHARED`` or ``../shared``)."""
    env = os.environ.get("CAFFE_MFV_SHARED")
    if env:
        return Path(env)
    return _REPO.parent / "shared"
