"""The verdict file MFV's parity gate reads (``mfv/parity_gate.py`` documents the format).

Written beside the weights that were checked (``<caffemodel>.parity.json``), or for seeded weights
at ``cache/parity/<prototxt stem>.seed<N>.parity.json`` under the repository root. A verdict names the
exact files by sha256, so it goes stale the moment either changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .compare import ParityResult
from .report import summary_line, write_text_atomic

__all__ = ["FORMAT", "verdict_path", "write_verdict"]

FORMAT = "caffe-mfv-parity-verdict/1"
_REPO = Path(__file__).resolve().parent.parent


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verdict_path(
    prototxt: str | Path, caffemodel: str | Path | None, *, seed: int | None = None
) -> Path:
    """Where the verdict for these weights goes (the place MFV's gate looks)."""
    if caffemodel is not None:
        return Path(str(caffemodel) + ".parity.json")
    return _REPO / "cache" / "parity" / f"{Path(prototxt).stem}.seed{int(seed or 0)}.parity.json"


def write_verdict(
    result: ParityResult,
    *,
    prototxt: str | Path,
    caffemodel: str | Path | None,
    seed: int | None,
    report: str | Path,
    path: str | Path | None = None,
) -> Path:
    """Write the verdict of a finished run, atomically.

    Parameters
    ----------
    result : ParityResult
    prototxt : path
        The definition that was checked.
    caffemodel : path or None
        The weights file, or None for seeded weights.
    seed : int or None
        The ``port.seed_weights`` seed of seeded weights.
    report : path
        The JSON report of the run; stored relative to the verdict file when possible.
    path : path, optional
        Where to write (default: :func:`verdict_path`).

    Returns
    -------
    Path
        The verdict file.
    """
    out = Path(path) if path is not None else verdict_path(prototxt, caffemodel, seed=seed)
    report = Path(report).resolve()
    try:
        rel = os.path.relpath(report, out.parent.resolve())
    except ValueError:  # another drive
        rel = str(report)
    doc = {
        "format": FORMAT,
        "verdict": "pass" if result.passed else "fail",
        "report": rel,
        "prototxt_sha256": _sha256(prototxt),
        "caffemodel_sha256": None if caffemodel is None else _sha256(caffemodel),
        "seed": None if caffemodel is not None else seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary_line(result),
    }
    write_text_atomic(out, json.dumps(doc, indent=1) + "\n")
    return out
